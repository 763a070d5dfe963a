//! What each command does, on `Arc<dyn UserSessionStore>` from the manager.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;
use session_core::{
    Imported, ScanCursor, SessionError, SessionHandle, UserSession, UserSessionStore,
};
use session_manager::{CONFIG_FILE_VAR, NO_DATABASE, SessionConfig, SessionManager, redacted_url};

use crate::Failure;
use crate::cli::{Cli, Command, Migrate, Revoke};
use crate::output::{Progress, instant, session_rows, table};

/// How many times `migrate` looks at a sampled session the target seems to lack.
const SAMPLE_ROUNDS: usize = 3;

/// Sessions a page when a command walks a store.
const WALK_PAGE: usize = 1000;

type Outcome = std::result::Result<(), Failure>;

/// Runs the command the command line names.
pub(crate) async fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    match &cli.command {
        Command::Migrate(args) => migrate(&cli, args).await,
        command => {
            // Endings and a user's list act as the application does: during a move (the
            // application's `migrate_from_url`), on both stores.
            let as_application = matches!(
                command,
                Command::Revoke(_) | Command::List { .. } | Command::Inspect { .. }
            );
            let manager = open(&cli, cli.store.as_deref(), as_application).await?;
            let store = manager.sessions().clone();
            let outcome = match command {
                Command::Stats => stats(&store, json).await,
                Command::Inspect { handle, user } => {
                    inspect(&store, handle, user.as_deref(), json).await
                }
                Command::List { user } => list(&store, user, json).await,
                Command::Revoke(args) => revoke(&store, args, json).await,
                Command::Purge { dry_run } => purge(&store, *dry_run, json).await,
                Command::Export { out } => export(&store, out.as_deref(), json).await,
                Command::Import { input, dry_run } => {
                    import(&store, input.as_deref(), *dry_run, json).await
                }
                Command::Migrate(_) => unreachable_command(),
            };
            manager.shutdown().await;
            outcome
        }
    }
}

/// Only `Migrate` is matched before; kept a typed error rather than a panic.
fn unreachable_command() -> Outcome {
    Err(Failure::Usage("migrate is run on its own".into()))
}

/// The manager for the configured store with `url` over `store_url`: no application database,
/// no background purge.
///
/// With `as_application`, the configuration's move between stores (`migrate_from_url`,
/// `migrate_phase`) is kept, so that the command sees and ends sessions as the application's
/// instances do; else the tool works on the one store named.
async fn open(
    cli: &Cli,
    url: Option<&str>,
    as_application: bool,
) -> std::result::Result<SessionManager, Failure> {
    Ok(SessionManager::build(configured(cli, url, as_application)?).await?)
}

/// The configuration [`open`] builds, checked as far as it can be without connecting.
fn configured(
    cli: &Cli,
    url: Option<&str>,
    as_application: bool,
) -> std::result::Result<SessionConfig, Failure> {
    let file: Option<PathBuf> = cli.config.clone().or_else(|| {
        std::env::var_os(CONFIG_FILE_VAR)
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    });
    let vars = std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
    let mut config = SessionConfig::from_sources(file.as_deref(), vars)?;
    if let Some(url) = url {
        url.clone_into(&mut config.store_url);
    }
    if config.store_url.starts_with("memory:") {
        return Err(Failure::Usage(
            "memory:// sessions live inside one process; name a Redis, PostgreSQL or MySQL store \
             (--store URL, SESSION_STORE_URL or store_url in the file)"
                .into(),
        ));
    }
    if config.store_url.starts_with("sqlite")
        && matches!(
            session_manager::session_diesel::parse_sqlite_url(&config.store_url),
            Ok(session_manager::session_diesel::SqliteTarget::Memory(_))
        )
    {
        return Err(Failure::Usage(
            "an in-memory SQLite database lives inside one process; name a file: sqlite://path"
                .into(),
        ));
    }
    // Walks, copies and imports work on one store at a time: the application's migrating
    // setting would make a target also answer from the old store, and its checks pass without
    // the copy. A store that is itself the old one of the move is named on its own.
    if !as_application || config.migrate_from_url.as_deref() == Some(config.store_url.as_str()) {
        config.migrate_from_url = None;
        config.migrate_phase = None;
    }
    NO_DATABASE.clone_into(&mut config.database_url);
    config.database_replicas.clear();
    config.purge_interval = Duration::ZERO;
    config.validate()?;
    Ok(config)
}

/// Calls `each` with every page of a walk over the store's live sessions.
async fn walk(
    store: &Arc<dyn UserSessionStore>,
    progress: &Progress,
    mut each: impl FnMut(Vec<UserSession>),
) -> std::result::Result<u64, Failure> {
    let mut cursor: Option<ScanCursor> = None;
    let mut walked = 0u64;
    loop {
        let page = store.scan(cursor.as_ref(), WALK_PAGE).await?;
        walked += page.sessions.len() as u64;
        progress.inc(page.sessions.len() as u64);
        each(page.sessions);
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(walked),
        }
    }
}

/// Upper bounds of the sessions-per-user buckets of `stats`; the last is open.
const PER_USER_BUCKETS: [(u64, &str); 6] = [
    (1, "1"),
    (2, "2"),
    (5, "3-5"),
    (10, "6-10"),
    (50, "11-50"),
    (u64::MAX, ">50"),
];

/// Upper bounds of the "expires within" buckets of `stats`.
const EXPIRY_BUCKETS: [(Duration, &str); 5] = [
    (Duration::from_secs(5 * 60), "5m"),
    (Duration::from_secs(60 * 60), "1h"),
    (Duration::from_secs(24 * 60 * 60), "1d"),
    (Duration::from_secs(7 * 24 * 60 * 60), "7d"),
    (Duration::MAX, "later"),
];

async fn stats(store: &Arc<dyn UserSessionStore>, json: bool) -> Outcome {
    let progress = Progress::walk("walking");
    let now = store.policy().now();
    let mut per_user: HashMap<String, u64> = HashMap::new();
    let mut expiring = [0u64; EXPIRY_BUCKETS.len()];
    let mut remember_me = 0u64;
    let live = walk(store, &progress, |sessions| {
        for session in sessions {
            *per_user.entry(session.user_id).or_default() += 1;
            remember_me += u64::from(session.remember_me);
            // The sooner of the two expiries is when it ends unless touched.
            let ends = session.idle_expires_at.min(session.absolute_expires_at);
            let ahead = ends.duration_since(now).unwrap_or_default();
            let bucket = EXPIRY_BUCKETS
                .iter()
                .position(|(bound, _)| ahead <= *bound)
                .unwrap_or(EXPIRY_BUCKETS.len() - 1);
            expiring[bucket] += 1;
        }
    })
    .await?;
    progress.finish();
    let mut distribution = [0u64; PER_USER_BUCKETS.len()];
    for count in per_user.values() {
        let bucket = PER_USER_BUCKETS
            .iter()
            .position(|(bound, _)| count <= bound)
            .unwrap_or(PER_USER_BUCKETS.len() - 1);
        distribution[bucket] += 1;
    }
    let most = per_user.values().copied().max().unwrap_or(0);
    let users = per_user.len() as u64;
    if json {
        // Arrays, not maps: the buckets keep their order.
        let per_user: Vec<serde_json::Value> = PER_USER_BUCKETS
            .iter()
            .zip(distribution)
            .map(|((_, name), n)| json!({"sessions": name, "users": n}))
            .collect();
        let expiring: Vec<serde_json::Value> = EXPIRY_BUCKETS
            .iter()
            .zip(expiring)
            .map(|((_, name), n)| json!({"within": name, "sessions": n}))
            .collect();
        print_json(&json!({
            "backend": store.backend(),
            "live_sessions": live,
            "users": users,
            "remember_me": remember_me,
            "most_sessions_of_one_user": most,
            "users_by_sessions": per_user,
            "expiring_within": expiring,
        }));
        return Ok(());
    }
    println!("backend         {}", store.backend());
    println!("live sessions   {live}");
    println!("users           {users}");
    println!("remember me     {remember_me}");
    println!("most of a user  {most}");
    println!();
    println!("sessions per user");
    let widest = distribution.iter().copied().max().unwrap_or(0);
    for ((_, name), n) in PER_USER_BUCKETS.iter().zip(distribution) {
        println!(
            "{}",
            format!("  {name:>6}  {n:>9}  {}", bar(n, widest)).trim_end()
        );
    }
    println!();
    println!("ending within (idle or absolute expiry, whichever is sooner)");
    let widest = expiring.iter().copied().max().unwrap_or(0);
    for ((_, name), n) in EXPIRY_BUCKETS.iter().zip(expiring) {
        println!(
            "{}",
            format!("  {name:>6}  {n:>9}  {}", bar(n, widest)).trim_end()
        );
    }
    Ok(())
}

/// A histogram bar of up to 40 characters.
fn bar(n: u64, widest: u64) -> String {
    if widest == 0 {
        return String::new();
    }
    let len = (n.saturating_mul(40)).div_ceil(widest);
    "#".repeat(usize::try_from(len).unwrap_or(40))
}

fn parse_handle(text: &str) -> std::result::Result<SessionHandle, Failure> {
    SessionHandle::parse(text).map_err(|_| {
        Failure::Usage(format!(
            "{text:?} is not a session handle (43 characters of base64url, optionally behind a routing tag and `.`)"
        ))
    })
}

/// The live session under `handle`: from the user's list when the user is known, else by a walk.
async fn find(
    store: &Arc<dyn UserSessionStore>,
    handle: &SessionHandle,
    user: Option<&str>,
) -> std::result::Result<Option<UserSession>, Failure> {
    if let Some(user) = user {
        let sessions = store.list_by_user(user).await?;
        return Ok(sessions.into_iter().find(|s| &s.handle == handle));
    }
    let progress = Progress::walk("searching");
    let mut found = None;
    let mut cursor: Option<ScanCursor> = None;
    loop {
        let page = store.scan(cursor.as_ref(), WALK_PAGE).await?;
        progress.inc(page.sessions.len() as u64);
        if let Some(session) = page.sessions.into_iter().find(|s| &s.handle == handle) {
            found = Some(session);
            break;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    progress.finish();
    Ok(found)
}

async fn inspect(
    store: &Arc<dyn UserSessionStore>,
    handle: &str,
    user: Option<&str>,
    json: bool,
) -> Outcome {
    let handle = parse_handle(handle)?;
    let Some(session) = find(store, &handle, user).await? else {
        return Err(Failure::NotFound(format!("no live session {handle}")));
    };
    if json {
        print_json(&serde_json::to_value(&session).map_err(json_failure)?);
        return Ok(());
    }
    println!("handle             {}", session.handle);
    println!("user               {}", session.user_id);
    println!("company            {}", session.company_name);
    println!("email              {}", session.email);
    println!("root               {}", session.is_root);
    println!("remember me        {}", session.remember_me);
    println!("created            {}", instant(session.created_at));
    println!("last seen          {}", instant(session.last_seen_at));
    println!("idle expires       {}", instant(session.idle_expires_at));
    println!(
        "absolute expires   {}",
        instant(session.absolute_expires_at)
    );
    println!("version            {}", session.version);
    let attributes = serde_json::to_string(&session.attributes).map_err(json_failure)?;
    println!("attributes         {attributes}");
    Ok(())
}

async fn list(store: &Arc<dyn UserSessionStore>, user: &str, json: bool) -> Outcome {
    let sessions = store.list_by_user(user).await?;
    if json {
        print_json(&serde_json::to_value(&sessions).map_err(json_failure)?);
        return Ok(());
    }
    if sessions.is_empty() {
        println!("no live session of {user}");
        return Ok(());
    }
    print!("{}", table(&session_rows(&sessions)));
    Ok(())
}

async fn revoke(store: &Arc<dyn UserSessionStore>, args: &Revoke, json: bool) -> Outcome {
    let except = args.except.as_deref().map(parse_handle).transpose()?;
    if let Some(handle) = &args.handle {
        let handle = parse_handle(handle)?;
        let revoked = if args.dry_run {
            find(store, &handle, args.user.as_deref()).await?.is_some()
        } else {
            store.delete_by_handle(&handle).await?
        };
        if !revoked {
            return Err(Failure::NotFound(format!("no live session {handle}")));
        }
        report(
            json,
            &json!({"revoked": 1, "dry_run": args.dry_run}),
            &format!(
                "{} session {handle}",
                if args.dry_run {
                    "would revoke"
                } else {
                    "revoked"
                }
            ),
        );
        return Ok(());
    }
    let Some(user) = &args.user else {
        return Err(Failure::Usage("give --handle or --user".into()));
    };
    let revoked = if args.dry_run {
        store
            .list_by_user(user)
            .await?
            .iter()
            .filter(|s| Some(&s.handle) != except.as_ref())
            .count() as u64
    } else {
        store.delete_by_user(user, except.as_ref()).await?
    };
    let verb = if args.dry_run {
        "would revoke"
    } else {
        "revoked"
    };
    report(
        json,
        &json!({"revoked": revoked, "dry_run": args.dry_run}),
        &format!("{verb} {revoked} session(s) of {user}"),
    );
    Ok(())
}

async fn purge(store: &Arc<dyn UserSessionStore>, dry_run: bool, json: bool) -> Outcome {
    if dry_run {
        let note = if store.needs_purge() {
            "keeps expired sessions until purged (never returning them); purge would delete them"
        } else {
            "expires sessions itself; purge would only tidy its indexes"
        };
        report(
            json,
            &json!({"purged": null, "dry_run": true, "needs_purge": store.needs_purge()}),
            &format!("dry run: {} {note}", store.backend()),
        );
        return Ok(());
    }
    let started = Instant::now();
    let purged = store.purge_expired().await?;
    report(
        json,
        &json!({"purged": purged, "dry_run": false, "seconds": started.elapsed().as_secs_f64()}),
        &format!(
            "purged {purged} expired session(s) in {:.2} s",
            started.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}

async fn export(store: &Arc<dyn UserSessionStore>, out: Option<&Path>, json: bool) -> Outcome {
    let sink: Box<dyn Write> = match out {
        Some(path) => Box::new(
            std::fs::File::create(path)
                .map_err(|e| Failure::Runtime(format!("cannot create {}: {e}", path.display())))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut sink = BufWriter::new(sink);
    let progress = Progress::walk("exporting");
    let started = Instant::now();
    let mut failed = None;
    let exported = walk(store, &progress, |sessions| {
        for session in sessions {
            if failed.is_some() {
                return;
            }
            let written = serde_json::to_writer(&mut sink, &session)
                .map_err(json_failure)
                .and_then(|()| sink.write_all(b"\n").map_err(Failure::from));
            failed = written.err();
        }
    })
    .await?;
    if let Some(failure) = failed {
        return Err(failure);
    }
    sink.flush()?;
    drop(sink);
    progress.finish();
    // The sessions went to standard output when no file was named: the summary goes to stderr.
    let summary = format!(
        "exported {exported} session(s) in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    if out.is_some() {
        report(
            json,
            &json!({"exported": exported, "seconds": started.elapsed().as_secs_f64()}),
            &summary,
        );
    } else {
        eprintln!("{summary}");
    }
    Ok(())
}

/// What an import or a migration did with the sessions it was given.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
struct Tally {
    /// Sessions now stored in the target.
    stored: u64,
    /// Sessions the target already had (a repeat of an earlier run, or written there since).
    already_present: u64,
    /// Sessions expired by the time they arrived.
    expired: u64,
    /// Lines or sessions refused (not JSON, or not a valid session).
    refused: u64,
    /// Sessions that ended during the copy: refused by the target's tombstone, or (on a target
    /// without tombstones, or ended only in the source) removed again after their import.
    #[serde(default)]
    ended_during_copy: u64,
}

impl Tally {
    fn count(&mut self, imported: Imported) {
        match imported {
            Imported::Stored => self.stored += 1,
            Imported::AlreadyPresent => self.already_present += 1,
            Imported::Expired => self.expired += 1,
            // The session was ended in the target during the copy and left its tombstone there.
            Imported::Ended => self.ended_during_copy += 1,
        }
    }

    fn human(&self) -> String {
        let mut text = format!(
            "{} stored, {} already present, {} expired, {} refused",
            self.stored, self.already_present, self.expired, self.refused
        );
        if self.ended_during_copy > 0 {
            text.push_str(&format!(
                ", {} ended during the copy (refused or removed again)",
                self.ended_during_copy
            ));
        }
        text
    }
}

async fn import(
    store: &Arc<dyn UserSessionStore>,
    input: Option<&Path>,
    dry_run: bool,
    json: bool,
) -> Outcome {
    let (reader, size): (Box<dyn BufRead>, Option<u64>) = match input {
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| Failure::Runtime(format!("cannot open {}: {e}", path.display())))?;
            let size = file.metadata().ok().map(|m| m.len());
            (Box::new(std::io::BufReader::new(file)), size)
        }
        None => (Box::new(std::io::stdin().lock()), None),
    };
    let progress = Progress::bytes(size, if dry_run { "checking" } else { "importing" });
    let started = Instant::now();
    let mut tally = Tally::default();
    for (number, line) in reader.lines().enumerate() {
        let line = line?;
        progress.inc(line.len() as u64 + 1);
        if line.trim().is_empty() {
            continue;
        }
        let number = number + 1;
        let session: UserSession = match serde_json::from_str(&line) {
            Ok(session) => session,
            Err(err) => {
                tally.refused += 1;
                progress.println(&format!("line {number}: not a session: {err}"));
                continue;
            }
        };
        let outcome = if dry_run {
            session.validate_import(store.policy()).map(|()| {
                if store.policy().is_expired(&session, store.policy().now()) {
                    Imported::Expired
                } else {
                    Imported::Stored
                }
            })
        } else {
            store.import(&session).await
        };
        match outcome {
            Ok(imported) => tally.count(imported),
            Err(
                err @ (SessionError::InvalidInput { .. } | SessionError::PayloadTooLarge { .. }),
            ) => {
                tally.refused += 1;
                progress.println(&format!(
                    "line {number} ({}): refused: {err}",
                    session.handle
                ));
            }
            Err(err) => return Err(err.into()),
        }
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let mut summary = serde_json::to_value(&tally).map_err(json_failure)?;
    summary["dry_run"] = json!(dry_run);
    summary["seconds"] = json!(seconds);
    report(
        json,
        &summary,
        &format!(
            "{}{} in {seconds:.2} s",
            if dry_run { "dry run: " } else { "" },
            tally.human()
        ),
    );
    if tally.refused > 0 {
        return Err(Failure::Partial(format!(
            "{} line(s) refused",
            tally.refused
        )));
    }
    Ok(())
}

/// A migration's progress, kept in the state file after every page.
#[derive(Debug, Default, Serialize, Deserialize)]
struct MigrationState {
    /// The source and target, without credentials: a state file resumes only the same copy.
    from: String,
    to: String,
    /// Where the source's walk goes on; `None` before the first page.
    cursor: Option<String>,
    /// Sessions read from the source so far.
    walked: u64,
    tally: Tally,
    /// Seconds spent copying, over every run.
    seconds: f64,
    /// The page being copied, saved before its first import: a run killed between an import
    /// and its check leaves copies unchecked, and the next run checks these first.
    #[serde(default)]
    pending: Vec<UserSession>,
}

fn load_state(path: &Path, from: &str, to: &str) -> std::result::Result<MigrationState, Failure> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            return Ok(MigrationState {
                from: from.to_owned(),
                to: to.to_owned(),
                ..MigrationState::default()
            });
        }
        Err(err) => return Err(Failure::Runtime(format!("{}: {err}", path.display()))),
    };
    let state: MigrationState = serde_json::from_str(&text).map_err(|e| {
        Failure::Usage(format!(
            "{} is not a migration state file: {e}",
            path.display()
        ))
    })?;
    if state.from != from || state.to != to {
        return Err(Failure::Usage(format!(
            "{} belongs to the copy from {} to {}; remove it or name another --state",
            path.display(),
            state.from,
            state.to
        )));
    }
    Ok(state)
}

/// Writes the state beside its file and renames it over, so an interruption leaves the old one
/// or the new one, never half of either.
fn save_state(path: &Path, state: &MigrationState) -> Outcome {
    let text = serde_json::to_string_pretty(state).map_err(json_failure)?;
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}

/// A session kept for the check after the copy: of all walked, those with the smallest handles
/// (a uniform sample, since handles are hashes, and the same one on a resumed run).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sampled {
    handle: SessionHandle,
    user_id: String,
    version: u64,
}

async fn migrate(cli: &Cli, args: &Migrate) -> Outcome {
    let from = redacted_url(&args.from);
    let to = redacted_url(&args.to);
    if args.from == args.to {
        return Err(Failure::Usage("--from and --to name the same store".into()));
    }
    let source_manager = open(cli, Some(&args.from), false).await?;
    if args.dry_run {
        // A dry run reads the source only: the target is checked as configuration, never
        // opened (opening a SQL store runs its migrations).
        configured(cli, Some(&args.to), false)?;
        let source = source_manager.sessions().clone();
        let outcome = copy_and_check(&source, None, args, &from, &to, cli.json).await;
        source_manager.shutdown().await;
        return outcome;
    }
    let target_manager = open(cli, Some(&args.to), false).await?;
    let source = source_manager.sessions().clone();
    let target = target_manager.sessions().clone();
    let outcome = copy_and_check(&source, Some(&target), args, &from, &to, cli.json).await;
    source_manager.shutdown().await;
    target_manager.shutdown().await;
    outcome
}

/// The copy and its check; `target` is `None` on a dry run.
async fn copy_and_check(
    source: &Arc<dyn UserSessionStore>,
    target: Option<&Arc<dyn UserSessionStore>>,
    args: &Migrate,
    from: &str,
    to: &str,
    json: bool,
) -> Outcome {
    let mut state = match &args.state {
        Some(path) if !args.dry_run => load_state(path, from, to)?,
        _ => MigrationState {
            from: from.to_owned(),
            to: to.to_owned(),
            ..MigrationState::default()
        },
    };
    let resumed = state.cursor.is_some();
    let progress = Progress::walk(if args.dry_run { "walking" } else { "copying" });
    progress.inc(state.walked);
    let limit = usize::try_from(args.batch).unwrap_or(500);
    let mut sample: std::collections::BTreeSet<Sampled> = std::collections::BTreeSet::new();
    let started = Instant::now();
    // Seconds spent by earlier runs of a resumed copy.
    let earlier_seconds = state.seconds;
    let mut cursor = state.cursor.clone().map(ScanCursor::new);
    if let Some(target) = target {
        // A run killed inside a page: its copies are checked now, then the page is walked again.
        let pending = std::mem::take(&mut state.pending);
        let pending: Vec<&UserSession> = pending.iter().collect();
        state.tally.ended_during_copy += undo_ended_copies(source, target, &pending).await?;
    }
    loop {
        let page = source.scan(cursor.as_ref(), limit).await?;
        if let (Some(path), Some(_)) = (&args.state, target) {
            state.pending.clone_from(&page.sessions);
            state.seconds = earlier_seconds + started.elapsed().as_secs_f64();
            save_state(path, &state)?;
        }
        let mut stored: Vec<&UserSession> = Vec::new();
        for session in &page.sessions {
            sample.insert(Sampled {
                handle: session.handle.clone(),
                user_id: session.user_id.clone(),
                version: session.version,
            });
            if sample.len() > args.sample {
                sample.pop_last();
            }
            let Some(target) = target else {
                state.tally.stored += 1;
                continue;
            };
            match target.import(session).await {
                Ok(Imported::Stored) => {
                    state.tally.stored += 1;
                    stored.push(session);
                }
                Ok(imported) => state.tally.count(imported),
                Err(
                    err
                    @ (SessionError::InvalidInput { .. } | SessionError::PayloadTooLarge { .. }),
                ) => {
                    state.tally.refused += 1;
                    progress.println(&format!("{}: refused: {err}", session.handle));
                }
                Err(err) => return Err(err.into()),
            }
        }
        // A session ended in the source while it was being copied must not live on in the
        // target. An application serving through the migrating store ends it in the target
        // first, with a tombstone that refuses the copy (ADR 0029); an ending that reached only
        // the source (a target without tombstones, an instance outside the migration) is caught
        // here: each copy this page stored checks the source again (ADR 0026).
        if let Some(target) = target {
            state.tally.ended_during_copy += undo_ended_copies(source, target, &stored).await?;
        }
        state.pending.clear();
        state.walked += page.sessions.len() as u64;
        progress.inc(page.sessions.len() as u64);
        cursor = page.next;
        state.cursor = cursor.as_ref().map(|c| c.as_str().to_owned());
        if let (Some(path), false) = (&args.state, args.dry_run) {
            state.seconds = earlier_seconds + started.elapsed().as_secs_f64();
            save_state(path, &state)?;
        }
        if cursor.is_none() {
            break;
        }
    }
    progress.finish();
    let seconds = earlier_seconds + started.elapsed().as_secs_f64();
    let rate = if seconds > 0.0 {
        state.walked as f64 / seconds
    } else {
        0.0
    };

    // The check: counts on both sides, and every sampled session in the target (or gone from
    // the source since, as live traffic signs people out).
    let mut missing = Vec::new();
    let (source_live, target_live) = if let Some(target) = target {
        // An ending in progress (new store first, then the old one) looks for a moment like a
        // copy missing from the target; a candidate is looked at again, a little later, and only
        // one still in the source and still not in the target counts.
        let mut candidates: Vec<&Sampled> = sample.iter().collect();
        for round in 0..SAMPLE_ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let mut by_user: BTreeMap<&str, Vec<&Sampled>> = BTreeMap::new();
            for sampled in candidates.drain(..) {
                by_user.entry(&sampled.user_id).or_default().push(sampled);
            }
            for (user, sampled) in by_user {
                let there = target.list_by_user(user).await?;
                let here = source.list_by_user(user).await?;
                for s in sampled {
                    let copied = there
                        .iter()
                        .any(|t| t.handle == s.handle && t.version >= s.version);
                    let still_in_source = here.iter().any(|t| t.handle == s.handle);
                    if !copied && still_in_source {
                        candidates.push(s);
                    }
                }
            }
            if candidates.is_empty() {
                break;
            }
        }
        missing.extend(candidates.iter().map(|s| s.handle.to_string()));
        let quiet = Progress::hidden();
        (
            walk(source, &quiet, drop).await?,
            walk(target, &quiet, drop).await?,
        )
    } else {
        (state.walked, 0)
    };
    if let (Some(path), false) = (&args.state, args.dry_run) {
        // The copy is complete: a later run starts over rather than resuming nothing.
        let _ = std::fs::remove_file(path);
    }
    let summary = json!({
        "from": from,
        "to": to,
        "dry_run": args.dry_run,
        "resumed": resumed,
        "walked": state.walked,
        "stored": state.tally.stored,
        "already_present": state.tally.already_present,
        "expired": state.tally.expired,
        "refused": state.tally.refused,
        "ended_during_copy": state.tally.ended_during_copy,
        "seconds": seconds,
        "sessions_per_second": rate,
        "source_live": source_live,
        "target_live": target_live,
        "sampled": sample.len(),
        "sample_missing": missing,
    });
    let human = if args.dry_run {
        format!(
            "dry run: {} live session(s) in {from} would be copied to {to}",
            state.walked
        )
    } else {
        format!(
            "walked {} session(s) of {from} in {seconds:.2} s ({rate:.0}/s): {}\n\
             live now: {source_live} in the source, {target_live} in the target{}\n\
             sample: {} of {} checked sessions missing from the target",
            state.walked,
            state.tally.human(),
            if source_live == target_live {
                " (equal)"
            } else {
                ""
            },
            missing.len(),
            sample.len()
        )
    };
    report(json, &summary, &human);
    if !missing.is_empty() {
        return Err(Failure::Partial(format!(
            "{} sampled session(s) are in the source but not in the target: {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    if state.tally.refused > 0 {
        return Err(Failure::Partial(format!(
            "{} session(s) refused by the target",
            state.tally.refused
        )));
    }
    Ok(())
}

/// Of the sessions just stored in `target`, deletes those the source no longer holds (by their
/// users' lists); returns how many it removed. A session whose source copy merely expired is
/// kept: the application touches only the target's copy, which may be live.
async fn undo_ended_copies(
    source: &Arc<dyn UserSessionStore>,
    target: &Arc<dyn UserSessionStore>,
    stored: &[&UserSession],
) -> std::result::Result<u64, Failure> {
    let mut users: Vec<&str> = stored.iter().map(|s| s.user_id.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    let policy = source.policy();
    let mut undone = 0;
    for user in users {
        let still: std::collections::HashSet<SessionHandle> = source
            .list_by_user(user)
            .await?
            .into_iter()
            .map(|s| s.handle)
            .collect();
        for session in stored.iter().filter(|s| s.user_id == user) {
            if !still.contains(&session.handle)
                && !policy.is_expired(session, policy.now())
                && target.delete_by_handle(&session.handle).await?
            {
                undone += 1;
            }
        }
    }
    Ok(undone)
}

fn json_failure(err: serde_json::Error) -> Failure {
    Failure::Runtime(format!("JSON: {err}"))
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

/// The summary: JSON with `--json`, else the human line.
fn report(json: bool, value: &serde_json::Value, human: &str) {
    if json {
        print_json(value);
    } else {
        println!("{human}");
    }
}
