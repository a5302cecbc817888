//! OS confinement of agent processes: Landlock filesystem rules and scopes, and the switch to
//! another Unix user, applied between fork and exec of every agent CLI.
//!
//! Owns: the read set ("everything except the protected paths"), the write set, building the
//! Landlock ruleset *before* fork, the async-signal-safe [`Prepared::enter`] the child runs in
//! `pre_exec`, resolving a `run_as` user before fork, and probing the kernel's Landlock ABI for
//! `doctor` and the start-up log.
//! Knows nothing about: any particular agent CLI (a backend says what to protect and what its
//! CLI writes) or the tool policy (this holds whatever the policy decided).
//!
//! Landlock only grants; it cannot carve a hole out of a granted tree. So the read set is built
//! by granting each child of `/` and, for a directory that contains a protected path,
//! descending into it and granting its other children instead (recursively). A symlink whose
//! target is, contains or lies inside a protected path is not granted: its real place is
//! handled where it lives. Listing a descended directory itself (`ls /`, `ls ~`) is therefore
//! denied; everything below its granted children works.
//!
//! Rules hold on inodes, so reaching a protected file another way (`/proc/<pid>/fd/N`, a
//! symlink made later, a bind mount of a granted tree) is still denied; a hard link made
//! earlier to a protected file from a granted place is not (the runtime dir is 0700).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};
use nix::libc;

pub use crate::config::ConfinementMode;

/// Upper bound on the rules of one ruleset (a descended directory with huge fan-out would
/// otherwise make every spawn slow). Reaching it is an error, never a silently smaller grant.
pub const MAX_RULES: usize = 4096;

/// The Landlock ABI from which everything asked for here is enforced: connecting to a pathname
/// UNIX socket (the control socket) is only handled from ABI 9 on.
pub const FULL_ABI: i32 = 9;

/// Devices a CLI and its tools open for writing (`> /dev/null`, the controlling terminal,
/// pseudo-terminals for interactive tools). Their data goes nowhere the gateway keeps.
const WRITABLE_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
    "/dev/ptmx",
    "/dev/pts",
];

/// Shared memory (POSIX semaphores and `shm_open`, e.g. Python's multiprocessing) needs files
/// created and removed there; the gateway keeps nothing in it.
const SHARED_MEMORY: &str = "/dev/shm";

/// What the OS enforces on one agent process. Built by a backend, carried in `ProcessSpec`.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub mode: ConfinementMode,
    /// Neither readable nor writable: the gateway's runtime dir, its config file.
    pub protected: Vec<PathBuf>,
    /// Writable (and readable) trees: the working directory and the agent's own state. None of
    /// them may contain or lie inside a protected path.
    pub writable: Vec<PathBuf>,
    /// The per-agent private tmp (exported as `TMPDIR`); the one writable tree allowed inside
    /// a protected one (it lives in the runtime dir next to nothing else).
    pub private_tmp: Option<PathBuf>,
    /// Single files granted read-only even inside a protected tree: a run's own hook settings,
    /// which only that run's domain can open (each run gets its own ruleset).
    pub readable_files: Vec<PathBuf>,
    /// Run as this user instead of the daemon's.
    pub user: Option<RunAs>,
}

/// A `run_as` user, looked up before fork (NSS lookups are not async-signal-safe).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (what `initgroups` would set).
    pub groups: Vec<u32>,
    pub home: PathBuf,
}

impl RunAs {
    /// Looks the user up. Only root can switch users: anything else is refused here with the
    /// sudoers alternative, instead of failing at the first spawn.
    pub fn resolve(name: &str) -> Result<RunAs, ConfineError> {
        let err = |reason: String| ConfineError::User {
            user: name.to_string(),
            reason,
        };
        if !nix::unistd::geteuid().is_root() {
            return Err(err(
                "the gateway must run as root to switch users; otherwise run the gateway itself \
                 as that user, or let it call the agent through sudo (see docs/ARCHITECTURE.md, \
                 'Confinement')"
                    .into(),
            ));
        }
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| err(format!("lookup failed: {e}")))?
            .ok_or_else(|| err("no such user".into()))?;
        if user.uid.is_root() {
            return Err(err(
                "is root: running agents as root is what run_as avoids".into()
            ));
        }
        let cname = CString::new(name).map_err(|_| err("contains a NUL byte".into()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid)
            .map_err(|e| err(format!("cannot list its groups: {e}")))?;
        Ok(RunAs {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups: groups.into_iter().map(|g| g.as_raw()).collect(),
            home: user.dir,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    #[error("confinement is required but this kernel cannot enforce it ({0}); set `confinement: best_effort` to run unconfined")]
    Unavailable(String),
    #[error("cannot confine the agent: {0}")]
    Rules(String),
    #[error("run_as '{user}': {reason}")]
    User { user: String, reason: String },
}

/// The kernel's Landlock ABI version; 0 when Landlock is missing or disabled.
pub fn abi() -> i32 {
    // The kernel's ABI does not change while the daemon runs: asked once.
    static ABI: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *ABI.get_or_init(query_abi)
}

fn query_abi() -> i32 {
    // LANDLOCK_CREATE_RULESET_VERSION: returns the ABI instead of creating a ruleset.
    const VERSION: libc::c_uint = 1;
    // SAFETY: a query with a NULL attribute pointer and size 0, as documented for VERSION.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// How much of the confinement a kernel with Landlock ABI `abi` enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    Full,
    /// Enforced, except these (human-readable) restrictions.
    Partial(Vec<&'static str>),
    NotEnforced,
}

impl Enforcement {
    pub fn for_abi(abi: i32) -> Enforcement {
        if abi < 1 {
            return Enforcement::NotEnforced;
        }
        let mut missing = Vec::new();
        if abi < 2 {
            missing.push("renaming or linking files across directories (ABI 2)");
        }
        if abi < 3 {
            missing.push("truncating files (ABI 3)");
        }
        if abi < 5 {
            missing.push("ioctl on devices (ABI 5)");
        }
        if abi < 6 {
            missing.push("signals to the gateway and abstract UNIX sockets (ABI 6)");
        }
        if abi < FULL_ABI {
            missing.push("connecting to pathname UNIX sockets such as the control socket (ABI 9)");
        }
        if missing.is_empty() {
            Enforcement::Full
        } else {
            Enforcement::Partial(missing)
        }
    }

    /// `fully enforced`, `partially enforced (not: …)`, `not enforced`.
    pub fn describe(&self) -> String {
        match self {
            Enforcement::Full => "fully enforced".into(),
            Enforcement::Partial(missing) => {
                format!("partially enforced (not covered: {})", missing.join("; "))
            }
            Enforcement::NotEnforced => "not enforced (Landlock unavailable)".into(),
        }
    }
}

/// Everything the child needs, opened and allocated before fork.
#[derive(Debug)]
pub struct Prepared {
    /// `None` when Landlock is off or unavailable (best effort).
    ruleset: Option<OwnedFd>,
    ids: Option<Ids>,
    /// Set `no_new_privs` even without a ruleset (unless confinement is `off`): it marks the
    /// process tree as an agent's for the control socket, which then only lets it `send`.
    no_new_privs: bool,
}

#[derive(Debug)]
struct Ids {
    uid: libc::uid_t,
    gid: libc::gid_t,
    groups: Vec<libc::gid_t>,
}

impl Prepared {
    /// Whether a Landlock domain will be entered.
    pub fn confined(&self) -> bool {
        self.ruleset.is_some()
    }

    /// Runs in the child between fork and exec: only raw syscalls, no allocation, no locks.
    /// Drops to the `run_as` user first (groups, then gid, then uid), then enters the domain
    /// (`no_new_privs` is required for an unprivileged `landlock_restrict_self`).
    pub fn enter(&self) -> io::Result<()> {
        if let Some(ids) = &self.ids {
            // SAFETY: plain syscalls on values owned by `self`, which outlives the call.
            unsafe {
                if libc::setgroups(ids.groups.len(), ids.groups.as_ptr()) != 0
                    || libc::setgid(ids.gid) != 0
                    || libc::setuid(ids.uid) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        if self.no_new_privs || self.ruleset.is_some() {
            // SAFETY: a documented prctl call with constant arguments.
            if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if let Some(fd) = &self.ruleset {
            // SAFETY: a documented landlock_restrict_self call on an open ruleset fd.
            unsafe {
                if libc::syscall(libc::SYS_landlock_restrict_self, fd.as_raw_fd(), 0u32) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

impl Sandbox {
    /// Computes the rules and creates the ruleset (in the parent, before fork).
    pub fn prepare(&self) -> Result<Prepared, ConfineError> {
        let ids = self.user.as_ref().map(|u| Ids {
            uid: u.uid,
            gid: u.gid,
            groups: u.groups.clone(),
        });
        if self.mode == ConfinementMode::Off {
            return Ok(Prepared {
                ruleset: None,
                ids,
                no_new_privs: false,
            });
        }
        let level = abi();
        if level < 1 {
            return match self.mode {
                ConfinementMode::Required => Err(ConfineError::Unavailable(
                    "Landlock is missing or disabled".into(),
                )),
                _ => {
                    tracing::debug!("Landlock unavailable; agent runs unconfined (best effort)");
                    Ok(Prepared {
                        ruleset: None,
                        ids,
                        no_new_privs: true,
                    })
                }
            };
        }
        let plan = self.plan()?;
        let ruleset = build_ruleset(&plan)?;
        Ok(Prepared {
            ruleset: Some(ruleset),
            ids,
            no_new_privs: true,
        })
    }

    /// The read and write grants, checked for consistency with the protected set.
    pub fn plan(&self) -> Result<Plan, ConfineError> {
        let protected: Vec<PathBuf> = self.protected.iter().map(|p| real_path(p)).collect();
        let mut writable = Vec::new();
        for w in &self.writable {
            let real = real_path(w);
            if let Some(p) = protected
                .iter()
                .find(|p| p.starts_with(&real) || real.starts_with(p))
            {
                return Err(ConfineError::Rules(format!(
                    "writable path {} overlaps the protected path {}",
                    w.display(),
                    p.display()
                )));
            }
            if real.exists() {
                writable.push(real);
            }
        }
        if Path::new(SHARED_MEMORY).is_dir() {
            writable.push(PathBuf::from(SHARED_MEMORY));
        }
        if let Some(tmp) = &self.private_tmp {
            let real = real_path(tmp);
            if protected.iter().any(|p| p.starts_with(&real)) {
                return Err(ConfineError::Rules(format!(
                    "private tmp {} contains a protected path",
                    tmp.display()
                )));
            }
            writable.push(real);
        }
        let mut read = read_roots(&protected)?;
        for f in &self.readable_files {
            if !f.is_file() {
                return Err(ConfineError::Rules(format!(
                    "{} is not a file; only single files may be granted inside protected paths",
                    f.display()
                )));
            }
            read.push(f.clone());
        }
        let devices = WRITABLE_DEVICES
            .iter()
            .map(PathBuf::from)
            .filter(|d| d.exists())
            .collect();
        Ok(Plan {
            read,
            writable,
            devices,
            protected,
        })
    }
}

/// The grants of one ruleset, for the ruleset itself and for `doctor`.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Read and execute.
    pub read: Vec<PathBuf>,
    /// Every file-system right.
    pub writable: Vec<PathBuf>,
    /// Read, write and ioctl, no creating or removing.
    pub devices: Vec<PathBuf>,
    pub protected: Vec<PathBuf>,
}

fn build_ruleset(plan: &Plan) -> Result<OwnedFd, ConfineError> {
    let rules = |e: landlock::RulesetError| ConfineError::Rules(e.to_string());
    // Asked for in full; rights the running kernel lacks are dropped (best effort) and
    // reported through `Enforcement`. The ABI is the crate's newest, not the kernel's.
    let all = AccessFs::from_all(ABI::V10);
    let read = AccessFs::from_read(ABI::V10);
    let device = AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(rules)?
        .scope(Scope::from_all(ABI::V10))
        .map_err(rules)?
        .create()
        .map_err(rules)?;
    let grants = plan
        .read
        .iter()
        .map(|p| (p, read))
        .chain(plan.writable.iter().map(|p| (p, all)))
        .chain(plan.devices.iter().map(|p| (p, device | read)));
    for (path, access) in grants {
        let fd = match PathFd::new(path) {
            Ok(fd) => fd,
            // Gone since it was listed (a temp file): nothing to grant.
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "confinement: path vanished");
                continue;
            }
        };
        let access = if path.is_dir() {
            access
        } else {
            // Directory-only rights on a file are an error in the kernel.
            access & AccessFs::from_file(ABI::V10)
        };
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(rules)?;
    }
    Option::<OwnedFd>::from(ruleset)
        .ok_or_else(|| ConfineError::Unavailable("the kernel refused to create a ruleset".into()))
}

/// The canonical form of `p`; for a path that does not exist (yet), its longest existing
/// ancestor canonicalized plus the rest, so a protected file created later is still covered.
pub fn real_path(p: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(p) {
        return real;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => real_path(parent).join(name),
        _ => p.to_path_buf(),
    }
}

/// Every tree to grant read access to: the children of `/`, with the directories on the way
/// to a protected path replaced by their other children. `protected` must be canonical.
pub fn read_roots(protected: &[PathBuf]) -> Result<Vec<PathBuf>, ConfineError> {
    let mut out = Vec::new();
    descend(Path::new("/"), protected, &mut out)?;
    Ok(out)
}

fn descend(dir: &Path, protected: &[PathBuf], out: &mut Vec<PathBuf>) -> Result<(), ConfineError> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        // Unlistable: granting the directory whole would grant the protected path in it.
        ConfineError::Rules(format!("cannot list {}: {e}", dir.display()))
    })?;
    let mut names: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    names.sort();
    for path in names {
        let Ok(real) = std::fs::canonicalize(&path) else {
            // A dangling symlink: nothing to read through it.
            continue;
        };
        let is_protected = protected.iter().any(|p| real.starts_with(p));
        let holds_protected = protected.iter().any(|p| p.starts_with(&real));
        if is_protected {
            continue;
        }
        if holds_protected {
            // Only the directory itself is walked, never an alias (symlink) of it: the real
            // place is reached on its own from `/`.
            if real == path {
                descend(&path, protected, out)?;
            }
            continue;
        }
        if out.len() >= MAX_RULES {
            return Err(ConfineError::Rules(format!(
                "more than {MAX_RULES} entries beside the protected paths (in {}); move the \
                 gateway's runtime dir or config to a less crowded directory",
                dir.display()
            )));
        }
        out.push(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_roots_grant_everything_but_the_protected_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let base = real_path(tmp.path());
        for d in ["a/runtime/agents", "a/other", "b"] {
            std::fs::create_dir_all(base.join(d)).unwrap();
        }
        std::fs::write(base.join("a/config.yaml"), "x").unwrap();
        std::fs::write(base.join("a/notes.txt"), "x").unwrap();
        std::os::unix::fs::symlink(base.join("a/runtime"), base.join("b/alias")).unwrap();
        std::os::unix::fs::symlink(base.join("a"), base.join("b/alias-of-parent")).unwrap();
        std::os::unix::fs::symlink(base.join("a/other"), base.join("b/fine")).unwrap();
        let protected = vec![base.join("a/runtime"), base.join("a/config.yaml")];
        let roots = read_roots(&protected).unwrap();

        // Beside the protected paths everything is granted, as whole trees.
        assert!(roots.contains(&base.join("a/other")), "{roots:?}");
        assert!(roots.contains(&base.join("a/notes.txt")), "{roots:?}");
        assert!(roots.contains(&base.join("b")), "{roots:?}");
        assert!(roots.contains(&PathBuf::from("/usr")), "{roots:?}");
        // Nothing granted is, holds or leads into a protected path.
        for r in &roots {
            let real = real_path(r);
            for p in &protected {
                assert!(
                    !real.starts_with(p) && !p.starts_with(&real),
                    "{} grants {}",
                    r.display(),
                    p.display()
                );
            }
        }
        // The ancestors themselves are not granted (that would grant all below them).
        assert!(!roots.contains(&base.join("a")));
        assert!(!roots
            .iter()
            .any(|r| r == Path::new("/tmp") && base.starts_with("/tmp")));
    }

    #[test]
    fn symlinks_into_or_above_a_protected_path_are_not_granted() {
        let tmp = tempfile::tempdir().unwrap();
        let base = real_path(tmp.path());
        std::fs::create_dir_all(base.join("a/runtime")).unwrap();
        std::fs::create_dir_all(base.join("b")).unwrap();
        std::os::unix::fs::symlink(base.join("a/runtime"), base.join("a/alias")).unwrap();
        std::os::unix::fs::symlink(base.join("a"), base.join("a/up")).unwrap();
        let roots = read_roots(&[base.join("a/runtime")]).unwrap();
        assert!(!roots.contains(&base.join("a/alias")), "{roots:?}");
        assert!(!roots.contains(&base.join("a/up")), "{roots:?}");
    }

    #[test]
    fn writable_paths_may_not_overlap_protected_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let base = real_path(tmp.path());
        std::fs::create_dir_all(base.join("runtime/agents/a/tmp")).unwrap();
        let sandbox = |writable: Vec<PathBuf>, tmp: Option<PathBuf>| Sandbox {
            mode: ConfinementMode::Required,
            protected: vec![base.join("runtime")],
            writable,
            private_tmp: tmp,
            readable_files: vec![],
            user: None,
        };
        // The parent of the runtime dir as a work dir would make it writable.
        let err = sandbox(vec![base.clone()], None).plan().unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        let err = sandbox(vec![base.join("runtime/agents")], None)
            .plan()
            .unwrap_err();
        assert!(err.to_string().contains("overlaps"), "{err}");
        // The private tmp is the one tree allowed inside the runtime dir.
        let plan = sandbox(vec![], Some(base.join("runtime/agents/a/tmp")))
            .plan()
            .unwrap();
        assert_eq!(
            plan.writable.last(),
            Some(&base.join("runtime/agents/a/tmp"))
        );
        assert!(plan.devices.contains(&PathBuf::from("/dev/null")));
    }

    #[test]
    fn enforcement_names_what_an_old_kernel_misses() {
        assert_eq!(Enforcement::for_abi(0), Enforcement::NotEnforced);
        assert_eq!(Enforcement::for_abi(FULL_ABI), Enforcement::Full);
        let seven = Enforcement::for_abi(7).describe();
        assert!(seven.starts_with("partially enforced"), "{seven}");
        assert!(seven.contains("control socket"), "{seven}");
        assert!(!seven.contains("signals"), "{seven}");
        assert!(Enforcement::for_abi(4).describe().contains("signals"));
    }

    #[test]
    fn off_prepares_no_ruleset() {
        let s = Sandbox {
            mode: ConfinementMode::Off,
            protected: vec![],
            writable: vec![],
            private_tmp: None,
            readable_files: vec![],
            user: None,
        };
        assert!(!s.prepare().unwrap().confined());
    }
}
