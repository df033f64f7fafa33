//! The `when` condition of a stage: `<stage>.<key> <op> <value>`.
//!
//! Deliberately tiny: one comparison against one value of an earlier stage's metadata.
//! That is enough to branch a video pipeline ("objects were found", "duration > 60")
//! while every condition stays checkable before a run starts.

use std::fmt;

use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct StageCondition {
    pub stage: String,
    pub key: String,
    pub op: CompareOp,
    pub value: Literal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Number(f64),
    Bool(bool),
    String(String),
}

/// Why a condition does not parse, with the 1-based column where it went wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ConditionError {
    pub column: usize,
    pub message: String,
}

/// Why a condition could not be evaluated against a stage's metadata.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("stage {stage:?} wrote no metadata value {key:?}")]
    Missing { stage: String, key: String },
    #[error("{stage}.{key} is {found}, which cannot be compared with {expected}")]
    TypeMismatch {
        stage: String,
        key: String,
        found: String,
        expected: String,
    },
}

impl fmt::Display for CompareOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
        })
    }
}

impl Literal {
    fn kind(&self) -> &'static str {
        match self {
            Literal::Number(_) => "a number",
            Literal::Bool(_) => "a boolean",
            Literal::String(_) => "a string",
        }
    }
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn skip_space(&mut self) {
        while self.text[self.pos..].starts_with(' ') {
            self.pos += 1;
        }
    }
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }
    fn error(&self, message: impl Into<String>) -> ConditionError {
        ConditionError {
            column: self.text[..self.pos].chars().count() + 1,
            message: message.into(),
        }
    }
    fn identifier(&mut self, what: &str) -> Result<String, ConditionError> {
        let rest = self.rest();
        let len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(rest.len());
        if len == 0 || !rest.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
            return Err(self.error(format!("expected {what}")));
        }
        self.pos += len;
        Ok(rest[..len].to_string())
    }
}

impl StageCondition {
    pub fn parse(text: &str) -> Result<Self, ConditionError> {
        let mut c = Cursor { text, pos: 0 };
        c.skip_space();
        let stage = c.identifier("a stage name, as in `detect.objects > 0`")?;
        if !c.rest().starts_with('.') {
            return Err(c.error("expected `.` and a metadata key after the stage name"));
        }
        c.pos += 1;
        let key = c.identifier("a metadata key after `.`")?;
        c.skip_space();
        let op = [
            ("==", CompareOp::Eq),
            ("!=", CompareOp::Ne),
            (">=", CompareOp::Ge),
            ("<=", CompareOp::Le),
            (">", CompareOp::Gt),
            ("<", CompareOp::Lt),
        ]
        .into_iter()
        .find(|(sym, _)| c.rest().starts_with(sym));
        let Some((sym, op)) = op else {
            return Err(c.error("expected one of == != > >= < <="));
        };
        c.pos += sym.len();
        c.skip_space();
        let value = parse_literal(&mut c)?;
        c.skip_space();
        if !c.rest().is_empty() {
            return Err(c.error(format!("unexpected {:?} after the value", c.rest())));
        }
        if matches!(value, Literal::Bool(_) | Literal::String(_))
            && !matches!(op, CompareOp::Eq | CompareOp::Ne)
        {
            return Err(ConditionError {
                column: 1,
                message: format!("{} can only be compared with == or !=", value.kind()),
            });
        }
        Ok(StageCondition {
            stage,
            key,
            op,
            value,
        })
    }

    /// Evaluates the condition against the referenced stage's metadata object.
    pub fn evaluate(&self, metadata: &serde_json::Map<String, Value>) -> Result<bool, EvalError> {
        let found = metadata.get(&self.key).ok_or_else(|| EvalError::Missing {
            stage: self.stage.clone(),
            key: self.key.clone(),
        })?;
        let mismatch = || EvalError::TypeMismatch {
            stage: self.stage.clone(),
            key: self.key.clone(),
            found: found.to_string(),
            expected: self.value.kind().to_string(),
        };
        let ordering = match (&self.value, found) {
            (Literal::Number(want), Value::Number(n)) => {
                let got = n.as_f64().ok_or_else(mismatch)?;
                got.partial_cmp(want).ok_or_else(mismatch)?
            }
            (Literal::Bool(want), Value::Bool(got)) => got.cmp(want),
            (Literal::String(want), Value::String(got)) => got.as_str().cmp(want.as_str()),
            _ => return Err(mismatch()),
        };
        use std::cmp::Ordering::*;
        Ok(match self.op {
            CompareOp::Eq => ordering == Equal,
            CompareOp::Ne => ordering != Equal,
            CompareOp::Gt => ordering == Greater,
            CompareOp::Ge => ordering != Less,
            CompareOp::Lt => ordering == Less,
            CompareOp::Le => ordering != Greater,
        })
    }

    /// Whether the literal fits a metadata value of the given type.
    pub fn literal_fits(&self, ty: crate::ParamType) -> bool {
        use crate::ParamType;
        matches!(
            (&self.value, ty),
            (Literal::Number(_), ParamType::Integer | ParamType::Number)
                | (Literal::Bool(_), ParamType::Boolean)
                | (Literal::String(_), ParamType::String)
        )
    }

    pub fn literal_kind(&self) -> &'static str {
        self.value.kind()
    }
}

fn parse_literal(c: &mut Cursor) -> Result<Literal, ConditionError> {
    let rest = c.rest();
    if let Some(quote) = rest.chars().next().filter(|q| *q == '"' || *q == '\'') {
        let Some(end) = rest[1..].find(quote) else {
            return Err(c.error("string value has no closing quote"));
        };
        c.pos += end + 2;
        return Ok(Literal::String(rest[1..end + 1].to_string()));
    }
    for (word, value) in [("true", true), ("false", false)] {
        if rest.starts_with(word) {
            c.pos += word.len();
            return Ok(Literal::Bool(value));
        }
    }
    let len = rest
        .find(|ch: char| !(ch.is_ascii_digit() || matches!(ch, '.' | '-' | '+' | 'e' | 'E')))
        .unwrap_or(rest.len());
    match rest[..len].parse::<f64>() {
        Ok(n) if len > 0 && n.is_finite() => {
            c.pos += len;
            Ok(Literal::Number(n))
        }
        _ => Err(c.error("expected a number, true, false or a quoted string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn meta(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn parses_a_comparison() {
        let c = StageCondition::parse(" detect.objects >= 2 ").expect("valid");
        assert_eq!(c.stage, "detect");
        assert_eq!(c.key, "objects");
        assert_eq!(c.op, CompareOp::Ge);
        assert_eq!(c.value, Literal::Number(2.0));
        let s = StageCondition::parse("probe.codec == 'vp8'").expect("valid");
        assert_eq!(s.value, Literal::String("vp8".into()));
    }

    #[test]
    fn reports_the_column_of_a_mistake() {
        let e = StageCondition::parse("detect.objects => 0").expect_err("bad op");
        assert_eq!(
            StageCondition::parse("a.b == x").map_err(|e| e.column),
            Err(8)
        );
        assert!(e.message.contains("expected one of"), "{e}");
        assert_eq!(e.column, 16);
        let e = StageCondition::parse("detect objects > 0").expect_err("no dot");
        assert_eq!(e.column, 7);
        let e = StageCondition::parse("detect.objects ~ 0").expect_err("no op");
        assert_eq!(e.to_string(), "column 16: expected one of == != > >= < <=");
        let e = StageCondition::parse("a.b == 'open").expect_err("unclosed");
        assert!(e.message.contains("closing quote"));
        let e = StageCondition::parse("a.b > true").expect_err("ordered bool");
        assert!(e.message.contains("== or !="));
        let e = StageCondition::parse("a.b > 1 x").expect_err("trailing");
        assert_eq!(e.column, 9);
    }

    #[test]
    fn evaluates_against_metadata() {
        let c = StageCondition::parse("detect.objects > 0").expect("valid");
        assert_eq!(c.evaluate(&meta(json!({"objects": 3}))), Ok(true));
        assert_eq!(c.evaluate(&meta(json!({"objects": 0}))), Ok(false));
        assert!(matches!(
            c.evaluate(&meta(json!({}))),
            Err(EvalError::Missing { .. })
        ));
        assert!(matches!(
            c.evaluate(&meta(json!({"objects": "many"}))),
            Err(EvalError::TypeMismatch { .. })
        ));
        let b = StageCondition::parse("probe.audio != false").expect("valid");
        assert_eq!(b.evaluate(&meta(json!({"audio": true}))), Ok(true));
    }
}
