//! SVG plots (plotters, SVG backend only: no fonts or system libraries needed).

use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::path::Path;

/// Memory per connection (user space and kernel) vs connections held.
pub(crate) fn density(path: &Path, rows: &[crate::density::StepRow], title: &str) -> Result<()> {
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let xmax = rows.iter().map(|r| r.held).max().unwrap_or(1).max(1) as f64 * 1.05;
    let ymax = rows
        .iter()
        .flat_map(|r| {
            [
                r.user_bytes_per_conn,
                r.kernel_bytes_per_conn,
                r.user_anon_bytes_per_conn,
            ]
        })
        .fold(600.0f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("connections held")
        .y_desc("bytes per connection")
        .x_label_formatter(&|x| format!("{:.0}k", x / 1000.0))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    type Metric = fn(&crate::density::StepRow) -> f64;
    let series: [(&str, RGBColor, Metric); 3] = [
        ("gateway user space (RSS delta / conn)", BLUE, |r| {
            r.user_bytes_per_conn
        }),
        ("gateway RssAnon delta / conn", GREEN, |r| {
            r.user_anon_bytes_per_conn
        }),
        (
            "kernel per socket end ((slab+tcp mem) delta / conn / 2)",
            RED,
            |r| r.kernel_bytes_per_conn,
        ),
    ];
    for (name, color, f) in series {
        let pts: Vec<(f64, f64)> = rows.iter().map(|r| (r.held as f64, f(r))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
            .map_err(|e| anyhow!("{e}"))?;
    }
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, 512.0), (xmax, 512.0)],
            BLACK.mix(0.4),
        ))
        .map_err(|e| anyhow!("{e}"))?
        .label("512 B target (user space)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.4)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Latency histogram: count per log-spaced bucket.
pub(crate) fn latency(path: &Path, buckets: &[(f64, u64)], title: &str) -> Result<()> {
    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let nz: Vec<&(f64, u64)> = buckets.iter().filter(|b| b.1 > 0).collect();
    let xmin = nz.first().map_or(1.0, |b| b.0 / 1.3).max(0.5);
    let xmax = nz.last().map_or(10.0, |b| b.0 * 1.3);
    let ymax = buckets.iter().map(|b| b.1).max().unwrap_or(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((xmin..xmax).log_scale(), 0f64..ymax)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("round-trip latency (µs, log scale)")
        .y_desc("messages")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let mut lo = 0.0f64;
    let mut rects = Vec::new();
    for &(hi, c) in buckets {
        if c > 0 {
            rects.push(Rectangle::new(
                [(lo.max(xmin), 0.0), (hi, c as f64)],
                BLUE.mix(0.6).filled(),
            ));
        }
        lo = hi;
    }
    chart.draw_series(rects).map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
