//! Line charts as standalone SVG, for the figures the bench measures: no
//! plotting dependency, and a file any browser or document shows.

use std::fmt::Write as _;

/// One line of a chart.
pub struct Series {
    pub name: String,
    /// `(x, y)` in data units, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// A chart: axes, lines, and horizontal reference lines (targets).
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    pub series: Vec<Series>,
    /// `(label, y)`: a dashed horizontal line.
    pub references: Vec<(String, f64)>,
}

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 60.0;
const COLOURS: [&str; 6] = [
    "#555555", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
];

/// One axis: data range and how it maps to pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool, from_zero: bool) -> Self {
        let (mut lo, mut hi) = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            (lo, hi) = (1.0, 10.0);
        }
        if log {
            // The nearest 1, 2 or 5 times a power of ten outside the data.
            let decade = |v: f64| 10f64.powf(v.log10().floor());
            let (dlo, dhi) = (decade(lo), decade(hi));
            lo = [5.0, 2.0, 1.0]
                .into_iter()
                .map(|m| m * dlo)
                .find(|t| *t <= lo)
                .unwrap_or(dlo);
            hi = [1.0, 2.0, 5.0, 10.0]
                .into_iter()
                .map(|m| m * dhi)
                .find(|t| *t >= hi)
                .unwrap_or(10.0 * dhi);
        } else {
            if from_zero {
                lo = lo.min(0.0);
            }
            let step = nice_step(hi - lo);
            lo = (lo / step).floor() * step;
            hi = (hi / step).ceil() * step;
        }
        if hi <= lo {
            hi = lo + 1.0;
        }
        Self { lo, hi, log }
    }

    /// Where `v` falls, from 0 (low end) to 1 (high end).
    fn frac(&self, v: f64) -> f64 {
        if self.log {
            (v.max(f64::MIN_POSITIVE).log10() - self.lo.log10())
                / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        }
    }

    fn ticks(&self) -> Vec<f64> {
        if self.log {
            let mut ticks = Vec::new();
            let mut decade = 10f64.powf(self.lo.log10().floor());
            while decade <= self.hi * 1.0001 {
                for m in [1.0, 2.0, 5.0] {
                    let t = decade * m;
                    if t >= self.lo * 0.9999 && t <= self.hi * 1.0001 {
                        ticks.push(t);
                    }
                }
                decade *= 10.0;
            }
            ticks
        } else {
            let step = nice_step(self.hi - self.lo);
            let n = ((self.hi - self.lo) / step).round() as usize;
            (0..=n).map(|i| self.lo + step * i as f64).collect()
        }
    }
}

/// A round step giving about five intervals over `range`.
fn nice_step(range: f64) -> f64 {
    let raw = (range / 5.0).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude)
}

/// A number as a short label: 1.5k, 200k, 0.25.
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> String {
        let points = || self.series.iter().flat_map(|s| s.points.iter());
        let x = Axis::new(points().map(|p| p.0), self.x_log, false);
        let y = Axis::new(
            points()
                .map(|p| p.1)
                .chain(self.references.iter().map(|r| r.1)),
            false,
            true,
        );
        let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        let px = |v: f64| LEFT + x.frac(v) * pw;
        let py = |v: f64| TOP + (1.0 - y.frac(v)) * ph;
        let mut out = String::new();
        let _ = write!(
            out,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>
"#,
            LEFT + pw / 2.0,
            escape(&self.title)
        );
        for t in x.ticks() {
            let at = px(t);
            let _ = writeln!(
                out,
                r##"<line x1="{at:.1}" y1="{TOP}" x2="{at:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{at:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                label(t)
            );
        }
        for t in y.ticks() {
            let at = py(t);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                at + 4.0,
                label(t)
            );
        }
        let _ = writeln!(
            out,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>
<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>
<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"##,
            LEFT + pw / 2.0,
            HEIGHT - 18.0,
            escape(&self.x_label),
            TOP + ph / 2.0,
            escape(&self.y_label)
        );
        for (name, v) in &self.references {
            let at = py(*v);
            let _ = writeln!(
                out,
                r##"<line x1="{LEFT}" y1="{at:.1}" x2="{:.1}" y2="{at:.1}" stroke="#000" stroke-dasharray="6 4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT + pw - 4.0,
                at - 5.0,
                escape(name)
            );
        }
        for (i, s) in self.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let path: Vec<String> = s
                .points
                .iter()
                .filter(|(xv, yv)| xv.is_finite() && yv.is_finite() && (!self.x_log || *xv > 0.0))
                .map(|(xv, yv)| format!("{:.1},{:.1}", px(*xv), py(*yv)))
                .collect();
            let _ = writeln!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let ly = TOP + 10.0 + 20.0 * i as f64;
            let _ = writeln!(
                out,
                r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                LEFT + pw + 12.0,
                LEFT + pw + 36.0,
                LEFT + pw + 42.0,
                ly + 4.0,
                escape(&s.name)
            );
        }
        out.push_str("</svg>\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_becomes_a_polyline_with_its_points_inside_the_plot() {
        let chart = Chart {
            title: "t <1>".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_log: true,
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(1.0, 0.0), (10.0, 0.5), (100.0, 1.0)],
                },
                Series {
                    name: "b".into(),
                    points: vec![(3.0, 0.2), (30.0, 0.9)],
                },
            ],
            references: vec![("target".into(), 0.8)],
        };
        let svg = chart.svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("t &lt;1&gt;"), "title escaped");
        let lines: Vec<&str> = svg.lines().filter(|l| l.contains("<polyline")).collect();
        assert_eq!(lines.len(), 2);
        for (line, n) in lines.iter().zip([3, 2]) {
            let points = line
                .split("points=\"")
                .nth(1)
                .unwrap()
                .trim_end_matches("\"/>");
            let coords: Vec<(f64, f64)> = points
                .split(' ')
                .map(|p| {
                    let (x, y) = p.split_once(',').unwrap();
                    (x.parse().unwrap(), y.parse().unwrap())
                })
                .collect();
            assert_eq!(coords.len(), n);
            for (x, y) in coords {
                assert!((LEFT..=WIDTH - RIGHT).contains(&x), "{x}");
                assert!((TOP..=HEIGHT - BOTTOM).contains(&y), "{y}");
            }
        }
        assert!(svg.contains("stroke-dasharray"), "reference line drawn");
    }

    #[test]
    fn axes_end_on_round_numbers_outside_the_data() {
        let log = Axis::new([3.0, 420.0].into_iter(), true, false);
        assert_eq!((log.lo, log.hi), (2.0, 500.0));
        assert_eq!(
            log.ticks(),
            vec![2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0]
        );
        let lin = Axis::new([0.0, 383_000.0].into_iter(), false, true);
        assert_eq!((lin.lo, lin.hi), (0.0, 400_000.0));
        assert_eq!(label(200_000.0), "200k");
        assert_eq!(label(0.25), "0.25");
    }
}
