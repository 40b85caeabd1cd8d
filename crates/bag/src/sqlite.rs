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

/// Reads in pages ordered by (timestamp, id), so memory stays bounded on large bags.
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
    let sql = format!(
        "SELECT id, topic_id, timestamp, data FROM messages WHERE topic_id IN ({list}) AND (timestamp > ?1 OR (timestamp = ?1 AND id > ?2)) ORDER BY timestamp, id LIMIT 256"
    );
    let mut st = c.prepare(&sql).map_err(|e| damaged(path, 0, e))?;
    let (mut last_t, mut last_id) = (i64::MIN, i64::MIN);
    loop {
        let mut page = vec![];
        let rows = st
            .query_map([last_t, last_id], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })
            .map_err(|e| damaged(path, delivered, e))?;
        for row in rows {
            page.push(row.map_err(|e| damaged(path, delivered, e))?);
        }
        if page.is_empty() {
            return Ok(());
        }
        for (id, topic_id, t, data) in page {
            let (topic, msg_type) = ids[&topic_id].clone();
            f(BagMessage {
                topic,
                msg_type,
                log_time_ns: t,
                data,
            });
            delivered += 1;
            (last_t, last_id) = (t, id);
        }
    }
}
