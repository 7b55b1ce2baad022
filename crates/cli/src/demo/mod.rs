//! `tessera demo`: the platform at work, chapter by chapter, on in-memory cards.
//!
//! Each system adds its chapter as a module here and one entry in [`CHAPTERS`]. A chapter
//! narrates through a [`Narrator`]: explanations, and every APDU exchanged with what it means.
//! Secrets are shown redacted, as `--trace` shows them.

use clap::Args;
use serde_json::{Value, json};
use tessera_apdu::{Command, Response};
use tessera_host::trace;

use crate::Output;
use crate::error::{CliError, sw_meaning};

mod emoney;
mod keyring;
mod pairing;
mod platform;
pub(crate) mod proxy;
mod update;
mod vault;

/// One chapter of the demo.
pub struct Chapter {
    /// Short name, for `--chapter`.
    pub name: &'static str,
    /// Title shown as the chapter's heading.
    pub title: &'static str,
    /// Runs the chapter.
    pub run: fn(&mut Narrator) -> Result<(), CliError>,
}

/// The chapters, in order.
pub const CHAPTERS: &[Chapter] = &[
    platform::CHAPTER,
    pairing::CHAPTER,
    vault::CHAPTER,
    keyring::CHAPTER,
    update::CHAPTER,
    proxy::CHAPTER,
    emoney::CHAPTER,
];

/// Arguments of `tessera demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Run only this chapter (names: platform, pairing, vault, keyring, update, proxy, emoney).
    #[arg(long, value_name = "NAME")]
    chapter: Option<String>,
}

/// Runs the demo.
pub fn run(args: DemoArgs, out: Output) -> Result<(), CliError> {
    let chapters: Vec<&Chapter> = match &args.chapter {
        Some(name) => {
            let chapter = CHAPTERS.iter().find(|c| c.name == name).ok_or_else(|| {
                let names: Vec<&str> = CHAPTERS.iter().map(|c| c.name).collect();
                CliError::usage(format!("no chapter {name:?}; chapters: {}", names.join(", ")))
            })?;
            vec![chapter]
        }
        None => CHAPTERS.iter().collect(),
    };
    let mut report = Vec::new();
    for (i, chapter) in chapters.iter().enumerate() {
        let mut narrator = Narrator { json: out.json, steps: Vec::new() };
        if !out.json {
            println!("== Chapter {}: {} ==\n", i + 1, chapter.title);
        }
        (chapter.run)(&mut narrator)?;
        report.push(
            json!({ "chapter": chapter.name, "title": chapter.title, "steps": narrator.steps }),
        );
    }
    out.emit(String::new, || json!(report));
    Ok(())
}

/// Tells a chapter's story on stdout (or collects it for `--json`).
pub struct Narrator {
    json: bool,
    steps: Vec<Value>,
}

impl Narrator {
    /// A paragraph of explanation.
    pub fn say(&mut self, text: &str) {
        if self.json {
            self.steps.push(json!({ "say": text }));
        } else {
            println!("{text}\n");
        }
    }

    /// Shows one exchange: what it is for, the command as sent, the card's answer.
    pub fn exchange(&mut self, what: &str, command: &Command, response: &Response) {
        let bytes = command.to_bytes().unwrap_or_default();
        let cmd = trace::describe_command(&bytes);
        let rsp = trace::describe_response(&response.to_bytes());
        let meaning = sw_meaning(response.sw);
        if self.json {
            self.steps.push(json!({
                "exchange": what, "command": cmd, "response": rsp, "status": meaning,
            }));
        } else {
            println!("  {what}\n    {cmd}\n    {rsp}   ({meaning})\n");
        }
    }
}
