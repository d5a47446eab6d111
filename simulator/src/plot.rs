//! SVG plots for the report (plotters, SVG backend only).
//!
//! Two kinds: metrics against the master count (one line per series, log
//! scale where values span orders of magnitude) and time series (oldest
//! queued age around a herd, over a run).

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// A named line of (x, y) points.
pub struct Line {
    /// Legend text.
    pub label: String,
    /// Points.
    pub points: Vec<(f64, f64)>,
    /// Dashed (on-demand) or solid (queue).
    pub dashed: bool,
    /// Color index.
    pub color: usize,
}

/// Axes and title.
pub struct Axes<'a> {
    /// Chart title.
    pub title: &'a str,
    /// x axis label.
    pub x: &'a str,
    /// y axis label.
    pub y: &'a str,
    /// Logarithmic y axis.
    pub log_y: bool,
    /// x values are whole numbers (master counts).
    pub whole_x: bool,
    /// A target drawn as a horizontal line (an SLO), with its label.
    pub target: Option<(f64, &'a str)>,
}

/// A vertical marker (a herd's start).
pub struct Marker {
    /// Where on the x axis.
    pub x: f64,
    /// Label.
    pub label: String,
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

const COLORS: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// Draws `lines` into an SVG file at `path`.
pub fn lines(path: &Path, axes: &Axes, lines: &[Line], markers: &[Marker]) -> PlotResult {
    let root = SVGBackend::new(path, (860, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    draw(&root, axes, lines, markers)?;
    root.present()?;
    Ok(())
}

fn bounds(lines: &[Line]) -> (f64, f64, f64, f64) {
    let pts = lines.iter().flat_map(|l| l.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0, 1.0, 0.0, 1.0);
    }
    if x1 - x0 < 1e-9 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    (x0, x1, y0, y1)
}

fn draw(
    root: &DrawingArea<SVGBackend, Shift>,
    axes: &Axes,
    lines: &[Line],
    markers: &[Marker],
) -> PlotResult {
    let (x0, x1, y0, mut y1) = bounds(lines);
    if let Some((t, _)) = axes.target {
        y1 = y1.max(t);
    }
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(axes.title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(70);
    let y_top = y1 * 1.08;
    if axes.log_y {
        // values at or below zero sit on the floor of the log axis
        let floor = lines
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .filter(|y| *y > 0.0)
            .fold(f64::MAX, f64::min);
        let floor = if floor == f64::MAX { 0.01 } else { floor / 2.0 };
        let chart =
            builder.build_cartesian_2d(x0..x1, (floor..y_top.max(floor * 10.0)).log_scale())?;
        fill(chart, axes, lines, markers, floor, y_top)
    } else {
        let floor = y0.min(0.0);
        let chart = builder.build_cartesian_2d(x0..x1, floor..y_top)?;
        fill(chart, axes, lines, markers, floor, y_top)
    }
}

/// Mesh, markers, lines and legend, whatever the y axis.
fn fill<'a, Y: Ranged<ValueType = f64> + ValueFormatter<f64>>(
    mut chart: ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    axes: &Axes,
    lines: &[Line],
    markers: &[Marker],
    floor: f64,
    top: f64,
) -> PlotResult {
    let whole = |x: &f64| format!("{x:.0}");
    let decimal = |x: &f64| format!("{x:.1}");
    // as many digits as the value needs, so a log axis's ticks read 0.5,
    // 2, 50, 300 rather than one label per decade
    let readable = |y: &f64| match y.abs() {
        v if v >= 10.0 || y.fract() == 0.0 => format!("{y:.0}"),
        v if v >= 1.0 => format!("{y:.1}"),
        _ => format!("{y:.2}"),
    };
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .x_label_formatter(if axes.whole_x { &whole } else { &decimal })
        .y_labels(12)
        .y_label_formatter(&readable)
        .draw()?;
    if axes.log_y {
        // a log axis labels only powers of ten: label 2x and 5x inside the
        // plot too, so values between decades can be read
        let left = chart.x_range().start;
        let mut decade = 10f64.powf(floor.max(1e-9).log10().floor());
        let mut ticks = Vec::new();
        while decade <= top && decade.is_finite() && decade > 0.0 {
            for k in [2.0, 5.0] {
                let v = decade * k;
                if v > floor && v < top {
                    ticks.push(v);
                }
            }
            decade *= 10.0;
        }
        chart.draw_series(ticks.into_iter().map(|v| {
            Text::new(
                readable(&v),
                (left, v),
                ("sans-serif", 11).into_font().color(&BLACK.mix(0.6)),
            )
        }))?;
    }
    if let Some((t, label)) = axes.target {
        let (x0, x1) = {
            let r = chart.x_range();
            (r.start, r.end)
        };
        chart
            .draw_series(DashedLineSeries::new(
                vec![(x0, t), (x1, t)],
                2,
                3,
                ShapeStyle::from(&BLACK).stroke_width(1),
            ))?
            .label(label.to_string())
            .legend(|(x, y)| {
                let style = ShapeStyle::from(&BLACK).stroke_width(1);
                let seg = |a: i32| PathElement::new(vec![(a, 0), (a + 3, 0)], style);
                EmptyElement::at((x, y)) + seg(0) + seg(6) + seg(12)
            });
    }
    for m in markers {
        chart.draw_series(DashedLineSeries::new(
            vec![(m.x, floor), (m.x, top)],
            4,
            4,
            ShapeStyle::from(&BLACK.mix(0.5)).stroke_width(1),
        ))?;
        chart.draw_series(std::iter::once(Text::new(
            m.label.clone(),
            (m.x, top * 0.97),
            ("sans-serif", 13),
        )))?;
    }
    for l in lines {
        let color = COLORS[l.color % COLORS.len()];
        let style = ShapeStyle::from(&color).stroke_width(2);
        let pts: Vec<(f64, f64)> = l.points.iter().map(|&(x, y)| (x, y.max(floor))).collect();
        let drawn = if l.dashed {
            chart.draw_series(DashedLineSeries::new(pts.clone(), 6, 4, style))?
        } else {
            chart.draw_series(LineSeries::new(pts.clone(), style))?
        };
        // the legend's sample is drawn as the line is: dashed or solid
        let gap = if l.dashed { 3 } else { 0 };
        drawn.label(l.label.clone()).legend(move |(x, y)| {
            let seg = |a: i32| PathElement::new(vec![(a, 0), (a + 6 - gap, 0)], style);
            EmptyElement::at((x, y)) + seg(0) + seg(6) + seg(12)
        });
        if pts.len() <= 40 {
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    Ok(())
}
