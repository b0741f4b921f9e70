mod common;
use rustformers_models::*;
#[test]
fn dbg() {
    let dir = common::fixture("tiny-roberta-mlm");
    let e = common::load_expected(&dir);
    let m = AutoModelForMaskedLM::from_pretrained(dir.to_str().unwrap()).unwrap();
    let c = &e.cases[0];
    let l = m.model.forward(c.inputs()).unwrap();
    let l = l.to_vec3::<f32>().unwrap();
    let (want, _) = common::json_array(&c.outputs["logits_strided"]);
    for b in 0..3 { for p in 0..27 { let mut s = String::new(); for j in 0..25 { let g = l[b][p][j*16]; let w = want[(b*27+p)*25+j]; s += &format!("{:.3} ", g as f64 - w); } println!("{b} {p}: {s}"); } }
}
