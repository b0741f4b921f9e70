//! The text streamer gives valid text pieces even when a character spans several byte-level
//! tokens: nothing half-decoded (U+FFFD) is emitted, and the pieces join to the full decode.

use std::path::PathBuf;

use rustformers_core::{AutoTokenizer, EncodeOptions, TextInput};
use rustformers_generation::TextStreamer;

#[test]
fn multibyte_characters_are_held_until_complete() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama");
    let tok = AutoTokenizer::from_pretrained(dir.to_str().unwrap()).unwrap();
    let text = "héllo 👩‍👩‍👧 wörld — 日本語 ok";
    let enc = tok
        .encode(
            TextInput::Single(text),
            &EncodeOptions {
                add_special_tokens: false,
                ..Default::default()
            },
        )
        .unwrap();
    let ids = &enc.input_ids[0];
    // The tiny byte-level vocabulary splits these characters into several tokens.
    assert!(
        ids.len() > text.chars().count(),
        "characters are not split: {} tokens",
        ids.len()
    );
    let mut streamer = TextStreamer::new(&tok, true);
    let mut pieces = Vec::new();
    for id in ids {
        let piece = streamer.push(*id).unwrap();
        assert!(
            !piece.contains('\u{FFFD}'),
            "half a character emitted: {piece:?}"
        );
        pieces.push(piece);
    }
    pieces.push(streamer.finish().unwrap());
    assert!(
        pieces.iter().filter(|p| p.is_empty()).count() > 0,
        "no token was held back"
    );
    assert_eq!(pieces.concat(), tok.decode(ids, true).unwrap());
    assert_eq!(pieces.concat(), text);
}
