//! The soak's plot: four panels stacked, sharing the time axis (the run's
//! length), each scaled from 0 to its series' maximum (times 1.1): from
//! top to bottom proxy RSS, open fds, BPF map entries and live runtime
//! tasks. node-a is blue, node-b red; a grey vertical line marks the start
//! of the second half, which the verdict judges.
//!
//! It draws no text: plotters renders text through system fonts (or a
//! font file shipped with the code), and a plot that needs neither is one
//! less thing to install. The numbers and the labels are in `soak.csv`,
//! and the docs say which panel is which.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::{Sample, NODES};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 800;
const COLOURS: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40)];
const GRID: RGBColor = RGBColor(225, 225, 225);
const HALF: RGBColor = RGBColor(150, 150, 150);

/// The panels, top to bottom.
const PANELS: [fn(&Sample) -> f64; 4] = [|x| x.rss_mb, |x| x.fds, Sample::map_entries, |x| x.tasks];

/// Writes the plot of `samples` (a run of `seconds`) to `path` as PNG.
pub fn png(path: &Path, samples: &[Sample], seconds: f64) -> Result<()> {
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("plot: {e}"))?;
    let areas = root.split_evenly((PANELS.len(), 1));
    let x_end = samples.iter().map(|x| x.t).fold(seconds, f64::max).max(1.0);
    for (area, value) in areas.iter().zip(PANELS) {
        panel(area, samples, value, x_end).map_err(|e| anyhow!("plot: {e}"))?;
    }
    root.present().map_err(|e| anyhow!("plot: {e}"))?;
    Ok(())
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn panel<'a>(
    area: &Area<'a>,
    samples: &[Sample],
    value: fn(&Sample) -> f64,
    x_end: f64,
) -> Result<(), DrawingAreaErrorKind<<BitMapBackend<'a> as DrawingBackend>::ErrorType>> {
    let y_max = samples
        .iter()
        .map(value)
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&area.margin(12, 12, 16, 16))
        .build_cartesian_2d(0.0..x_end, 0.0..y_max)?;
    // Gridlines at tenths (no labels: see the module docs).
    for i in 0..=10 {
        let x = x_end * f64::from(i) / 10.0;
        let y = y_max * f64::from(i) / 10.0;
        chart.draw_series(LineSeries::new([(x, 0.0), (x, y_max)], GRID))?;
        chart.draw_series(LineSeries::new([(0.0, y), (x_end, y)], GRID))?;
    }
    let half = x_end / 2.0;
    chart.draw_series(LineSeries::new(
        [(half, 0.0), (half, y_max)],
        HALF.stroke_width(2),
    ))?;
    for (node, colour) in NODES.iter().zip(COLOURS) {
        let points = samples
            .iter()
            .filter(|x| x.node == *node)
            .map(|x| (x.t, value(x)))
            .filter(|(_, v)| v.is_finite());
        chart.draw_series(LineSeries::new(points, colour.stroke_width(2)))?;
    }
    Ok(())
}
