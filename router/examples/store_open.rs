//! What opening the store costs with many rooms and contact lists: the open-time pass that
//! moves lists kept inside old records to keys of their own reads every room record and
//! every contact list record (see `store::worker::Worker::move_inline_lists`).
//!
//! ```text
//! cargo run --release -p ringrouter --example store_open -- --records 100000
//! ```
//!
//! Writes `records` rooms (two members each) and as many contact lists (one entry each)
//! into a fresh store, closes it, then times three opens.

use std::sync::mpsc;
use std::time::Instant;

use clap::Parser;
use ringrouter::store::contacts::{ContactEntry, ContactRecord, ContactSave};
use ringrouter::store::{Durability, RoomRecord, Store};

#[derive(Debug, Parser)]
#[command(about = "ringrouter store open time")]
struct Args {
    /// Rooms, and contact lists, to write.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let h = Store::open(dir.path(), Durability::Memory)?;
    let (tx, rx) = mpsc::channel();
    for i in 0..args.records {
        let (t1, t2) = (tx.clone(), tx.clone());
        let room = RoomRecord {
            name: format!("room{i}"),
            owner: format!("u{i}"),
            join_code: format!("code{i}"),
            members: vec![format!("u{i}"), format!("v{i}")],
            ..RoomRecord::default()
        };
        h.create_room(room, move |r| {
            let _ = t1.send(r.is_ok());
        })?;
        let save = ContactSave {
            header: ContactRecord {
                version: 1,
                ..ContactRecord::default()
            },
            blocked_by: Vec::new(),
            upserts: vec![ContactEntry {
                user: format!("v{i}"),
                state: 1,
                version: 1,
            }],
            removed: Vec::new(),
            replace: false,
        };
        h.save_contacts(&format!("u{i}"), save, move |r| {
            let _ = t2.send(r.is_ok());
        })?;
    }
    drop(tx);
    let ok = rx.iter().filter(|&ok| ok).count();
    println!("{ok} of {} writes stored", 2 * args.records);
    h.shutdown()?;
    drop(h);
    for _ in 0..3 {
        let t = Instant::now();
        let h = Store::open(dir.path(), Durability::Memory)?;
        let (tx, rx) = mpsc::channel();
        h.get_room("room0", move |r| {
            let _ = tx.send(r.map(|r| r.map(|r| r.members.len())));
        })?;
        let members = rx.recv()?;
        println!(
            "open and a first read: {:.3} s (room0 has {members:?} members)",
            t.elapsed().as_secs_f64()
        );
        h.shutdown()?;
    }
    Ok(())
}
