//! rosbag2's sqlite3 storage: tables `topics(id, name, type, ...)` and
//! `messages(id, topic_id, timestamp, data)`.

use super::{BagError, BagMessage, TopicInfo};
use rusqlite::{Connection, OpenFlags};
use std::collections::HashMap;
use std::path::Path;

fn open(path: &Path) -> Result<Connection, BagError> {
    if !path.is_file() {
        return Err(BagError::Io {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "bag file not found"),
        });
    }
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| damaged(path, 0, e))
}

fn damaged(path: &Path, delivered: u64, e: impl std::fmt::Display) -> BagError {
    BagError::Damaged {
        path: path.into(),
        delivered,
        reason: e.to_string(),
    }
}

pub fn topics(path: &Path) -> Result<Vec<TopicInfo>, BagError> {
    let c = open(path)?;
    let mut st = c
        .prepare("SELECT t.name, t.type, (SELECT COUNT(*) FROM messages m WHERE m.topic_id = t.id) FROM topics t ORDER BY t.id")
        .map_err(|e| damaged(path, 0, e))?;
    let rows = st
        .query_map([], |r| {
            Ok(TopicInfo {
                name: r.get(0)?,
                msg_type: r.get(1)?,
                count: r.get::<_, i64>(2)? as u64,
            })
        })
        .map_err(|e| damaged(path, 0, e))?;
    rows.collect::<Result<_, _>>()
        .map_err(|e| damaged(path, 0, e))
}

/// Reads in pages of message keys ordered by (timestamp, id), then each
/// message's data by its key, so memory holds one message at a time: a page of
/// 4K frames would otherwise be gigabytes, in our page and in sqlite's sorter.
pub fn visit(path: &Path, topics: &[&str], f: &mut dyn FnMut(BagMessage)) -> Result<(), BagError> {
    let c = open(path)?;
    let mut delivered = 0u64;
    let mut ids: HashMap<i64, (String, String)> = HashMap::new();
    {
        let mut st = c
            .prepare("SELECT id, name, type FROM topics")
            .map_err(|e| damaged(path, 0, e))?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| damaged(path, 0, e))?;
        for row in rows {
            let (id, name, ty) = row.map_err(|e| damaged(path, 0, e))?;
            if topics.contains(&name.as_str()) {
                ids.insert(id, (name, ty));
            }
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    let list = ids
        .keys()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = key_query(&list);
    let mut keys = c.prepare(&sql).map_err(|e| damaged(path, 0, e))?;
    let mut data = c
        .prepare("SELECT data FROM messages WHERE id = ?1")
        .map_err(|e| damaged(path, 0, e))?;
    let (mut last_t, mut last_id) = (i64::MIN, i64::MIN);
    loop {
        let page = keys
            .query_map([last_t, last_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| damaged(path, delivered, e))?;
        if page.is_empty() {
            return Ok(());
        }
        for (id, topic_id, t) in page {
            let bytes: Vec<u8> = data
                .query_row([id], |r| r.get(0))
                .map_err(|e| damaged(path, delivered, e))?;
            let (topic, msg_type) = ids[&topic_id].clone();
            f(BagMessage {
                topic,
                msg_type,
                log_time_ns: t,
                data: bytes,
            });
            delivered += 1;
            (last_t, last_id) = (t, id);
        }
    }
}

/// The next page of keys after (?1, ?2) = (stamp, id). The bare
/// `timestamp >= ?1` lets sqlite seek on rosbag2's `timestamp_idx`, so each
/// page starts where the last ended instead of rescanning the bag (an `OR` at
/// the top level would hide the bound from the planner).
fn key_query(topic_ids: &str) -> String {
    format!(
        "SELECT id, topic_id, timestamp FROM messages \
         WHERE timestamp >= ?1 AND (timestamp > ?1 OR id > ?2) AND topic_id IN ({topic_ids}) \
         ORDER BY timestamp, id LIMIT {PAGE}"
    )
}

/// Message keys per page: small (three integers each), so a page costs
/// nothing whatever the frames' size.
const PAGE: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// A database shaped as rosbag2 writes it (`timestamp_idx` included),
    /// whose pages split runs of equal stamps, with ids running against stamp
    /// order and a topic nobody asked for.
    #[test]
    fn every_message_comes_once_in_stamp_order_across_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db3");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(
            "CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT, type TEXT, serialization_format TEXT);
             CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER, timestamp INTEGER, data BLOB);
             CREATE INDEX timestamp_idx ON messages (timestamp ASC);
             INSERT INTO topics VALUES (1, '/cam', 'sensor_msgs/msg/Image', 'cdr'), (2, '/other', 'std_msgs/msg/String', 'cdr');",
        )
        .unwrap();
        let n = 3 * PAGE as i64 + 7;
        // Stamps run backwards in id and repeat in threes; the data names its id.
        let stamp = |id: i64| (n - id) / 3;
        for id in 1..=n {
            let topic = if id % 5 == 0 { 2 } else { 1 };
            let mut data = id.to_le_bytes().to_vec();
            data.resize(8 + (id % 17) as usize, 0xAB);
            c.execute(
                "INSERT INTO messages VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![id, topic, stamp(id), data],
            )
            .unwrap();
        }
        let mut got = vec![];
        visit(&path, &["/cam"], &mut |m| got.push(m)).unwrap();
        assert!(got
            .iter()
            .all(|m| m.topic == "/cam" && m.msg_type.ends_with("Image")));
        let got: Vec<(i64, i64)> = got
            .iter()
            .map(|m| {
                let id = i64::from_le_bytes(m.data[..8].try_into().unwrap());
                assert_eq!(m.data.len(), 8 + (id % 17) as usize, "message {id}'s data");
                (m.log_time_ns, id)
            })
            .collect();
        let mut wanted: Vec<(i64, i64)> = (1..=n)
            .filter(|id| id % 5 != 0)
            .map(|id| (stamp(id), id))
            .collect();
        wanted.sort();
        assert_eq!(got, wanted);

        // Each page seeks on the stamp index rather than scanning the table.
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {}", key_query("1")))
            .unwrap()
            .query_map([0i64, 0], |r| r.get::<_, String>(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter()
                .any(|p| p.contains("timestamp_idx") && p.contains("timestamp>")),
            "the key query does not seek on timestamp_idx: {plan:?}"
        );
    }
}
