//! Where training logs go besides `log_history`: TensorBoard event files (`report_to
//! tensorboard`: `tensorboard --logdir OUTPUT_DIR/runs` shows the curves) and a PNG of
//! the loss curves (training_curves.png beside the checkpoints).
//!
//! Event files are TFRecord files of `tensorflow.Event` protocol buffers: each record is
//! its length (u64 LE), the masked CRC-32C of the length, the bytes, and their masked
//! CRC-32C; scalars are `Summary.Value { tag, simple_value }`. The PNG is written by hand
//! (stored deflate blocks), as nothing here needs an image library.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::args::TrainingArguments;
use crate::callbacks::TrainerState;
use crate::error::{Result, TrainerError};

/// Writes each log to the enabled integrations.
pub struct Reporter {
    events: Option<(PathBuf, std::fs::File)>,
    output_dir: PathBuf,
}

impl Reporter {
    pub fn new(args: &TrainingArguments) -> Result<Self> {
        let events = if args.tensorboard() {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            let dir = args.output_dir.join("runs");
            std::fs::create_dir_all(&dir).map_err(|e| TrainerError::io(&dir, e))?;
            let path = dir.join(format!(
                "events.out.tfevents.{}.rustformers.{}",
                secs as u64,
                std::process::id()
            ));
            let mut file = std::fs::File::create(&path).map_err(|e| TrainerError::io(&path, e))?;
            let mut first = Vec::new();
            proto_double(&mut first, 1, secs);
            proto_bytes(&mut first, 3, b"brain.Event:2");
            write_record(&mut file, &first).map_err(|e| TrainerError::io(&path, e))?;
            Some((path, file))
        } else {
            None
        };
        Ok(Self {
            events,
            output_dir: args.output_dir.clone(),
        })
    }

    /// One log entry (its numeric values, at its `step`).
    pub fn log(&mut self, logs: &Map<String, Value>) -> Result<()> {
        let Some((path, file)) = self.events.as_mut() else {
            return Ok(());
        };
        let step = logs.get("step").and_then(Value::as_i64).unwrap_or(0);
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let mut summary = Vec::new();
        for (k, v) in logs {
            if k == "step" {
                continue;
            }
            let Some(x) = v.as_f64() else { continue };
            let tag = if let Some(rest) = k.strip_prefix("eval_") {
                format!("eval/{rest}")
            } else {
                format!("train/{k}")
            };
            let mut value = Vec::new();
            proto_bytes(&mut value, 1, tag.as_bytes());
            proto_float(&mut value, 2, x as f32);
            proto_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        proto_double(&mut event, 1, secs);
        proto_varint_field(&mut event, 2, step as u64);
        proto_bytes(&mut event, 5, &summary);
        write_record(file, &event).map_err(|e| TrainerError::io(path, e))?;
        file.flush().map_err(|e| TrainerError::io(path, e))
    }

    /// Writes training_curves.png from the history (training loss, and evaluation loss
    /// where there is one); called at every checkpoint and at the end of training.
    pub fn finish(&mut self, state: &TrainerState) -> Result<()> {
        let series = |key: &str| -> Vec<(f64, f64)> {
            state
                .log_history
                .iter()
                .filter_map(|l| Some((l.get("step")?.as_f64()?, l.get(key)?.as_f64()?)))
                .collect()
        };
        let (train, eval) = (series("loss"), series("eval_loss"));
        if train.is_empty() && eval.is_empty() {
            return Ok(());
        }
        let png = plot(&[(&train, [31, 119, 180]), (&eval, [214, 39, 40])]);
        let path = self.output_dir.join("training_curves.png");
        Ok(rustformers_core::error::write_atomic(&path, &png)?)
    }
}

// ---------------------------------------------------------------------------------
// Protocol buffers and TFRecord

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn proto_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    varint(out, (field as u64) << 3);
    varint(out, v);
}

fn proto_double(out: &mut Vec<u8>, field: u32, v: f64) {
    varint(out, ((field as u64) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn proto_float(out: &mut Vec<u8>, field: u32, v: f32) {
    varint(out, ((field as u64) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn proto_bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// CRC-32C (Castagnoli), bitwise.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

fn write_record(w: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    w.write_all(&len)?;
    w.write_all(&masked_crc(&len).to_le_bytes())?;
    w.write_all(data)?;
    w.write_all(&masked_crc(data).to_le_bytes())
}

// ---------------------------------------------------------------------------------
// PNG

const W: usize = 640;
const H: usize = 400;
const MARGIN: usize = 40;

/// Points `(x, y)` and their colour.
type Series<'a> = (&'a Vec<(f64, f64)>, [u8; 3]);

/// Line plots of `(x, y)` series on shared axes, as an RGB PNG.
fn plot(series: &[Series]) -> Vec<u8> {
    let mut img = vec![255u8; W * H * 3];
    let pts = series.iter().flat_map(|(s, _)| s.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in pts {
        x0 = x0.min(*x);
        x1 = x1.max(*x);
        y0 = y0.min(*y);
        y1 = y1.max(*y);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let (pw, ph) = ((W - 2 * MARGIN) as f64, (H - 2 * MARGIN) as f64);
    let to_px = |x: f64, y: f64| {
        (
            MARGIN as f64 + (x - x0) / (x1 - x0) * pw,
            (H - MARGIN) as f64 - (y - y0) / (y1 - y0) * ph,
        )
    };
    // Axes.
    line(
        &mut img,
        (MARGIN as f64, (H - MARGIN) as f64),
        ((W - MARGIN) as f64, (H - MARGIN) as f64),
        [0, 0, 0],
    );
    line(
        &mut img,
        (MARGIN as f64, MARGIN as f64),
        (MARGIN as f64, (H - MARGIN) as f64),
        [0, 0, 0],
    );
    for (s, color) in series {
        for w in s.windows(2) {
            line(
                &mut img,
                to_px(w[0].0, w[0].1),
                to_px(w[1].0, w[1].1),
                *color,
            );
        }
        for (x, y) in s.iter() {
            let (px, py) = to_px(*x, *y);
            for dx in -2i64..=2 {
                for dy in -2i64..=2 {
                    put(&mut img, px as i64 + dx, py as i64 + dy, *color);
                }
            }
        }
    }
    encode_png(&img, W, H)
}

fn put(img: &mut [u8], x: i64, y: i64, c: [u8; 3]) {
    if x < 0 || y < 0 || x as usize >= W || y as usize >= H {
        return;
    }
    let i = (y as usize * W + x as usize) * 3;
    img[i..i + 3].copy_from_slice(&c);
}

fn line(img: &mut [u8], a: (f64, f64), b: (f64, f64), c: [u8; 3]) {
    let n = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
        put(img, x.round() as i64, y.round() as i64, c);
        put(img, x.round() as i64, y.round() as i64 + 1, c);
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// An 8-bit RGB PNG, zlib with stored (uncompressed) deflate blocks.
fn encode_png(rgb: &[u8], w: usize, h: usize) -> Vec<u8> {
    let mut raw = Vec::with_capacity(h * (w * 3 + 1));
    for row in rgb.chunks_exact(w * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&(w as u32).to_be_bytes());
    ihdr.extend_from_slice(&(h as u32).to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

/// Reads back the scalars of an event file written here: `(tag, step, value)`.
pub fn read_events(path: &Path) -> Result<Vec<(String, i64, f32)>> {
    let data = std::fs::read(path).map_err(|e| TrainerError::io(path, e))?;
    let bad = |m: &str| TrainerError::Other(format!("{}: {m}", path.display()));
    let mut out = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if i + 12 > data.len() {
            return Err(bad("truncated record header"));
        }
        let len_bytes = &data[i..i + 8];
        let len = u64::from_le_bytes(len_bytes.try_into().map_err(|_| bad("length"))?) as usize;
        let crc = u32::from_le_bytes(data[i + 8..i + 12].try_into().map_err(|_| bad("crc"))?);
        if crc != masked_crc(len_bytes) {
            return Err(bad("length CRC mismatch"));
        }
        let body = data
            .get(i + 12..i + 12 + len)
            .ok_or_else(|| bad("truncated record"))?;
        let crc = data
            .get(i + 12 + len..i + 16 + len)
            .ok_or_else(|| bad("truncated CRC"))?;
        if u32::from_le_bytes(crc.try_into().map_err(|_| bad("crc"))?) != masked_crc(body) {
            return Err(bad("data CRC mismatch"));
        }
        let (mut step, mut summary) = (0i64, None);
        for (field, value) in fields(body).ok_or_else(|| bad("bad event"))? {
            match (field, value) {
                (2, Field::Varint(v)) => step = v as i64,
                (5, Field::Bytes(b)) => summary = Some(b),
                _ => {}
            }
        }
        if let Some(s) = summary {
            for (_, v) in fields(s).ok_or_else(|| bad("bad summary"))? {
                let Field::Bytes(vb) = v else { continue };
                let (mut tag, mut x) = (String::new(), 0f32);
                for (f, val) in fields(vb).ok_or_else(|| bad("bad value"))? {
                    match (f, val) {
                        (1, Field::Bytes(t)) => tag = String::from_utf8_lossy(t).to_string(),
                        (2, Field::Fixed32(b)) => x = f32::from_le_bytes(b),
                        _ => {}
                    }
                }
                out.push((tag, step, x));
            }
        }
        i += 16 + len;
    }
    Ok(out)
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn fields(mut b: &[u8]) -> Option<Vec<(u32, Field<'_>)>> {
    fn read_varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b.split_first()?;
            *b = rest;
            v |= ((x & 0x7F) as u64) << shift;
            if x & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = read_varint(&mut b)?;
        let field = (key >> 3) as u32;
        let f = match key & 7 {
            0 => Field::Varint(read_varint(&mut b)?),
            1 => {
                b = b.get(8..)?;
                Field::Fixed64
            }
            5 => {
                let v: [u8; 4] = b.get(..4)?.try_into().ok()?;
                b = &b[4..];
                Field::Fixed32(v)
            }
            2 => {
                let n = read_varint(&mut b)? as usize;
                let v = b.get(..n)?;
                b = &b[n..];
                Field::Bytes(v)
            }
            _ => return None,
        };
        out.push((field, f));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_and_png_checksums_are_the_standard_ones() {
        // CRC-32C("123456789") = 0xE3069283; CRC-32("123456789") = 0xCBF43926.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn events_round_trip_and_png_is_well_formed() {
        let dir = tempfile::tempdir().unwrap();
        let args = TrainingArguments {
            output_dir: dir.path().to_path_buf(),
            report_to: vec!["tensorboard".into()],
            ..Default::default()
        };
        let mut r = Reporter::new(&args).unwrap();
        let mut state = TrainerState::default();
        for step in 1..=3 {
            let logs: Map<String, Value> = serde_json::from_value(
                serde_json::json!({"loss": 1.0 / step as f64, "learning_rate": 0.1, "step": step}),
            )
            .unwrap();
            r.log(&logs).unwrap();
            state.log_history.push(logs);
        }
        r.finish(&state).unwrap();
        let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(runs.len(), 1);
        let ev = read_events(&runs[0].path()).unwrap();
        assert!(ev.contains(&("train/loss".to_string(), 2, 0.5)), "{ev:?}");
        assert_eq!(
            ev.iter().filter(|e| e.0 == "train/learning_rate").count(),
            3
        );
        let png = std::fs::read(dir.path().join("training_curves.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!(
            u32::from_be_bytes(png[16..20].try_into().unwrap()),
            W as u32
        );
    }
}
