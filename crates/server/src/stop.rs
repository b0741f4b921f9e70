//! OpenAI's `stop` sequences on streamed text: text is held back while it could still be
//! the start of a stop sequence, and nothing from a stop sequence on is sent.

/// Holds back what may begin a stop sequence.
pub struct StopTrimmer {
    stops: Vec<String>,
    held: String,
    done: bool,
}

impl StopTrimmer {
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.to_vec(),
            held: String::new(),
            done: false,
        }
    }

    /// Adds `piece`; returns the text that can be sent now and whether a stop sequence
    /// was reached (then nothing more is sent).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        self.held.push_str(piece);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_string();
            self.held.clear();
            self.done = true;
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop sequence.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| {
                (1..s.len())
                    .rev()
                    .filter(|k| s.is_char_boundary(*k))
                    .find(|k| self.held.ends_with(&s[..*k]))
            })
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        (out, false)
    }

    /// What is still held at the end (no stop sequence came).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_and_cuts_at_stops() {
        let mut t = StopTrimmer::new(&["END".into(), "\n\n".into()]);
        assert_eq!(t.push("hello E"), ("hello ".into(), false));
        assert_eq!(t.push("N"), (String::new(), false));
        assert_eq!(t.push("Xtra"), ("ENXtra".into(), false));
        assert_eq!(t.push(" then END and more"), (" then ".into(), true));
        assert_eq!(t.push("ignored"), (String::new(), true));
        let mut u = StopTrimmer::new(&[]);
        assert_eq!(u.push("abc"), ("abc".into(), false));
        let mut v = StopTrimmer::new(&["é!".into()]);
        assert_eq!(v.push("caf"), ("caf".into(), false));
        assert_eq!(v.push("é"), (String::new(), false));
        assert_eq!(v.finish(), "é");
    }
}
