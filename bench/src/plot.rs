//! A small SVG line chart (log-scale x), enough to see how each dataplane
//! behaves as rules grow; no plotting dependency for one picture.
use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 6] = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02"];

pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series]) -> String {
    let (w, h, l, r, t, b) = (720.0, 420.0, 80.0, 200.0, 40.0, 50.0);
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| (p.0.max(1.0)).log10())).collect();
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let (x0, x1) = (xs.iter().cloned().fold(f64::MAX, f64::min), xs.iter().cloned().fold(f64::MIN, f64::max).max(0.001));
    let y1 = ys.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.1;
    let sx = |x: f64| l + (x.max(1.0).log10() - x0) / (x1 - x0).max(1e-9) * (w - l - r);
    let sy = |y: f64| h - b - y / y1 * (h - t - b);
    let mut s = String::new();
    let _ = write!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    let _ = write!(s, r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="20" font-size="15">{title}</text>"#, l);
    let _ = write!(
        s,
        r#"<line x1="{l}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}" stroke="black"/>"#,
        h - b,
        w - r,
        h - b,
        h - b
    );
    for i in 0..=4 {
        let y = y1 * f64::from(i) / 4.0;
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#, l - 6.0, sy(y) + 4.0, fmt(y));
    }
    for p in series.first().map(|s| s.points.clone()).unwrap_or_default() {
        let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#, sx(p.0), h - b + 16.0, p.0);
    }
    let _ = write!(s, r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#, (l + w - r) / 2.0, h - 10.0);
    let _ = write!(s, r#"<text x="16" y="{}" transform="rotate(-90 16 {})" text-anchor="middle">{y_label}</text>"#, h / 2.0, h / 2.0);
    for (i, se) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = se.points.iter().map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1))).collect();
        let _ = write!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, pts.join(" "));
        for p in &se.points {
            let _ = write!(s, r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{c}"/>"#, sx(p.0), sy(p.1));
        }
        let ly = t + 20.0 * i as f64;
        let _ = write!(
            s,
            r#"<rect x="{}" y="{}" width="12" height="12" fill="{c}"/><text x="{}" y="{}">{}</text>"#,
            w - r + 10.0,
            ly,
            w - r + 28.0,
            ly + 11.0,
            se.name
        );
    }
    s.push_str("</svg>\n");
    s
}

fn fmt(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}
