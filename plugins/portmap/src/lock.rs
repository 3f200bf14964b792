//! One short exclusive lock among weft's portmap processes. It only spans
//! one listing and one transaction, so that a DEL that finds the last
//! mapping gone can drop the table without deleting a concurrent ADD's
//! rules. Waiting is bounded: a stuck holder yields "try again later",
//! never the unbounded xtables wait of the reference (#510).

use std::fs::File;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use weft_cni::{Error, ErrorCode};

const DIR: &str = "/run/weft";
const PATH: &str = "/run/weft/portmap.lock";
const WAIT: Duration = Duration::from_secs(10);
const STEP: Duration = Duration::from_millis(2);

pub fn acquire() -> Result<Flock<File>, Error> {
    let io = |what: &str, e: std::io::Error| Error::io(format!("{what} {PATH}"), &e);
    std::fs::create_dir_all(DIR).map_err(|e| io("cannot create the directory of", e))?;
    let mut file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(PATH)
        .map_err(|e| io("cannot open", e))?;
    let deadline = Instant::now() + WAIT;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, Errno::EWOULDBLOCK | Errno::EINTR)) if Instant::now() < deadline => {
                file = f;
                std::thread::sleep(STEP);
            }
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(Error::new(
                    ErrorCode::TryAgainLater,
                    format!("{PATH} stayed locked for {WAIT:?}"),
                ))
            }
            Err((_, e)) => return Err(io("cannot lock", std::io::Error::from(e))),
        }
    }
}
