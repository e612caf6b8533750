//! `sat ssh`: OpenSSH's own client, with `sat connect` as its ProxyCommand. ssh keeps the
//! terminal, the agent, known_hosts and every option users know; Satellite only carries the
//! bytes. The relay settings reach the ProxyCommand through the environment, so that no token
//! shows in `ps` or in ssh's command line.

use std::os::unix::process::CommandExt;
use std::process::Command;

use sat_client::Trust;

use crate::args::{trust, TunnelArgs};
use crate::exit::{EXIT_UNAVAILABLE, EXIT_USAGE};

/// Replaces this process with ssh. Returns only if ssh could not be started.
pub fn run(target: &str, args: &TunnelArgs, ssh_args: &[String]) -> u8 {
    let service = target.rsplit_once('@').map_or(target, |(_, host)| host);
    if service.is_empty() || service.starts_with('-') {
        eprintln!("sat ssh: {target:?} is not [user@]SERVICE");
        return EXIT_USAGE;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("sat ssh: cannot find the sat binary to use as ProxyCommand: {e}");
            return EXIT_UNAVAILABLE;
        }
    };
    let proxy = format!(
        "{} connect {}",
        shell_quote(&exe.to_string_lossy()),
        shell_quote(service)
    );
    let (options, command) = split_ssh_args(ssh_args);
    let mut ssh = Command::new("ssh");
    ssh.arg("-o")
        .arg(format!("ProxyCommand={proxy}"))
        // known_hosts keys the host key by the service, which is what the user connects to.
        .arg("-o")
        .arg(format!("HostKeyAlias={service}"))
        .args(options)
        .arg(target)
        .args(command);
    // The ProxyCommand trusts what this run decided; the system's roots need no variable.
    match trust(&args.relay, args.via.as_deref()) {
        Trust::Ca(ca) => ssh.env("SAT_CA", ca),
        Trust::System => ssh.env_remove("SAT_CA"),
    };
    if let Some(relay) = &args.relay.relay {
        ssh.env("SAT_RELAY", relay);
    }
    if let Some(token) = &args.relay.token {
        ssh.env("SAT_TOKEN", token);
    }
    if let Some(via) = &args.via {
        ssh.env("SAT_VIA", via);
    }
    let e = ssh.exec();
    eprintln!(
        "sat ssh: cannot run ssh: {e} (it needs OpenSSH's client: apt install openssh-client)"
    );
    EXIT_UNAVAILABLE
}

/// ssh's options that take a value (from ssh(1)'s synopsis).
const SSH_VALUED_OPTIONS: &str = "BbcDEeFIiJLlmOoPpRSWw";

/// Splits what follows `--` into ssh's options, which go before the destination, and the
/// remote command, which goes after it, as ssh's own parser would.
fn split_ssh_args(args: &[String]) -> (&[String], &[String]) {
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg == "--" {
            return (&args[..i], &args[i + 1..]);
        }
        let Some(flags) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            break;
        };
        // In a cluster such as `-vL8080:x:80`, the first valued letter takes the rest of the
        // word, or the next word if it ends the cluster.
        let valued = flags
            .char_indices()
            .find(|(_, c)| SSH_VALUED_OPTIONS.contains(*c));
        let takes_next = valued.is_some_and(|(at, _)| at + 1 == flags.len());
        i += if takes_next { 2 } else { 1 };
    }
    let i = i.min(args.len());
    (&args[..i], &args[i..])
}

/// Quotes `s` for the shell that ssh runs ProxyCommand with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `args` and says how many went to the options and where the command starts.
    fn split(args: &[&str]) -> (usize, usize) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (options, command) = split_ssh_args(&args);
        (options.len(), args.len() - command.len())
    }

    #[test]
    fn options_go_before_the_host_and_the_command_after() {
        assert_eq!(
            split(&["-v", "-L", "8080:x:80", "-p22", "uptime", "-a"]),
            (4, 4)
        );
        // `--` ends the options and is dropped.
        assert_eq!(split(&["-vo", "BatchMode=yes", "--", "-x"]), (2, 3));
        assert_eq!(split(&["-L"]), (1, 1));
        assert_eq!(split(&["uptime"]), (0, 0));
    }

    #[test]
    fn quoting_survives_quotes_and_spaces() {
        assert_eq!(shell_quote("/opt/my sat/sat"), "'/opt/my sat/sat'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
