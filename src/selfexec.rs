//! Re-executing walkeeper: the one place that builds the command line of a walkeeper child
//! process (look-ahead uploads, prefetch, restore_command lines), with the global options the
//! parent was started with.

use std::ffi::{OsStr, OsString};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// This binary and the global options (`--config`, `--envdir`, WAL-E's globals) to start it with.
#[derive(Debug, Clone, Default)]
pub struct SelfExec {
    global: Vec<OsString>,
}

impl SelfExec {
    pub fn new(global: Vec<OsString>) -> Self {
        SelfExec { global }
    }

    /// The command `walkeeper <global options> <args>`.
    pub fn command<I, S>(&self, args: I) -> Result<Command>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
        let mut cmd = Command::new(exe);
        cmd.args(&self.global).args(args);
        Ok(cmd)
    }

    /// Starts `walkeeper <global options> <args>` detached from the caller: its own process
    /// group (PostgreSQL's signals to the archiver or startup process do not reach it), no
    /// stdin or stdout; its log goes to the caller's stderr. Its failure to start is returned,
    /// not waited for.
    pub fn spawn_detached<I, S>(&self, args: I) -> Result<()>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command(args)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0);
        cmd.spawn()
            .map(drop)
            .map_err(|e| Error::io("starting a walkeeper child process", e))
    }

    /// `walkeeper <global options> <args>` as one line for PostgreSQL settings (restore_command,
    /// which PostgreSQL runs through `sh`). Arguments with characters the shell would interpret
    /// are single-quoted.
    pub fn shell_line(&self, args: &[&str]) -> Result<String> {
        let exe = std::env::current_exe().map_err(|e| Error::io("current_exe", e))?;
        let mut parts = vec![shell_quote(&exe.to_string_lossy())];
        parts.extend(
            self.global
                .iter()
                .map(|a| shell_quote(&a.to_string_lossy())),
        );
        parts.extend(args.iter().map(|a| shell_quote(a)));
        Ok(parts.join(" "))
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-=%:,+@".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_line_quotes_what_the_shell_would_interpret() {
        let x = SelfExec::new(vec!["--envdir".into(), "/etc/wal e.d/it's".into()]);
        let line = x.shell_line(&["wal-fetch", "%f", "%p"]).unwrap();
        assert!(
            line.ends_with(" --envdir '/etc/wal e.d/it'\\''s' wal-fetch %f %p"),
            "{line}"
        );
    }
}
