//! Streams the client resets before the server answered them.

use super::*;

#[tokio::test]
async fn a_stream_reset_while_it_is_dialled_gives_its_dial_slot_back() {
    let (mesh, mut second, hanging) = one_dial_pending().await;
    // Dropping the response resets the stream (RST_STREAM CANCEL).
    hanging.abort();
    // Well before the dial's own 10-s timeout.
    timeout(Duration::from_secs(3), async {
        while mesh.recorder.pending() > 0 {
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reset stream's dial was dropped");
    // The calling node may dial again: this stream waits on its own dial
    // instead of getting 503 at once.
    let next = timeout(Duration::from_secs(1), second.connect(mesh.backend)).await;
    if let Ok(answer) = next {
        let status = answer.expect("a response").status();
        assert_ne!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(mesh.recorder.count("refused:dial_limit"), 0);
}
