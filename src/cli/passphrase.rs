//! Where the passphrase comes from: `--password-command`, `--password-file`,
//! `LARDER_PASSWORD`, or a prompt on the terminal, in that order.

use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

use super::GlobalArgs;

/// The passphrase of an existing repository.
pub fn existing(global: &GlobalArgs) -> Result<Zeroizing<String>> {
    if let Some(command) = &global.password_command {
        return from_command(command);
    }
    if let Some(path) = &global.password_file {
        return from_file(path);
    }
    if let Ok(pw) = std::env::var("LARDER_PASSWORD") {
        return Ok(Zeroizing::new(pw));
    }
    prompt("enter passphrase for repository: ", false)
}

/// A new passphrase (for `init`): the same sources, but a prompt asks twice.
pub fn new_for_init(global: &GlobalArgs) -> Result<Zeroizing<String>> {
    if global.password_command.is_some()
        || global.password_file.is_some()
        || std::env::var_os("LARDER_PASSWORD").is_some()
    {
        return existing(global);
    }
    prompt("enter passphrase for the new repository: ", true)
}

/// A passphrase for a new key (`key add`, `key passwd`): `--new-password-file`,
/// `LARDER_NEW_PASSWORD`, or a prompt asking twice.
pub fn new_key(file: Option<&std::path::Path>) -> Result<Zeroizing<String>> {
    if let Some(path) = file {
        return from_file(path);
    }
    if let Ok(pw) = std::env::var("LARDER_NEW_PASSWORD") {
        return Ok(Zeroizing::new(pw));
    }
    prompt("enter the new passphrase: ", true)
}

/// The passphrase of a second repository (`copy --to`, `init
/// --copy-chunker-params-from`): the given file, the environment variable
/// `env`, or a prompt naming `what` the repository is.
pub fn other(file: Option<&std::path::Path>, env: &str, what: &str) -> Result<Zeroizing<String>> {
    if let Some(path) = file {
        return from_file(path);
    }
    if let Ok(pw) = std::env::var(env) {
        return Ok(Zeroizing::new(pw));
    }
    let question = format!("enter passphrase for the {what} repository: ");
    prompt(&question, false)
}

fn from_file(path: &std::path::Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("reading passphrase file {}", path.display()))?,
    );
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

fn from_command(command: &str) -> Result<Zeroizing<String>> {
    let argv = larder::source::split_command(command).context("--password-command")?;
    let output = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running password command {:?}", argv[0]))?;
    if !output.status.success() {
        bail!(
            "password command {:?} failed with {}",
            argv[0],
            output.status
        );
    }
    let text = Zeroizing::new(
        String::from_utf8(output.stdout).context("password command printed non-UTF-8")?,
    );
    Ok(Zeroizing::new(
        text.lines().next().unwrap_or("").to_string(),
    ))
}

fn prompt(question: &str, confirm: bool) -> Result<Zeroizing<String>> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdin())
        && std::fs::File::open("/dev/tty").is_err()
    {
        bail!("no passphrase: set LARDER_PASSWORD, or pass --password-file or --password-command");
    }
    let first =
        Zeroizing::new(rpassword::prompt_password(question).context("reading the passphrase")?);
    if confirm {
        let second = Zeroizing::new(
            rpassword::prompt_password("enter it again: ").context("reading the passphrase")?,
        );
        if *first != *second {
            bail!("the passphrases do not match");
        }
        if first.is_empty() {
            bail!("refusing an empty passphrase");
        }
    }
    Ok(first)
}
