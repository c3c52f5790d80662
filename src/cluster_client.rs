//! `soundwave cluster status` and `soundwave cluster remove`: clients of a member's
//! `/_cluster/members` and `/_cluster/remove` endpoints (behind the cluster secret).

use std::time::Duration;

use serde_json::{Value, json};

use crate::cluster::MembersView;

/// The header carrying the cluster secret.
const SECRET_HEADER: &str = "x-soundwave-cluster-secret";

#[derive(Debug, thiserror::Error)]
pub enum ClusterClientError {
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "{url} refused the cluster secret (check --cluster-secret or SOUNDWAVE_CLUSTER_SECRET)"
    )]
    WrongSecret { url: String },
    #[error("{url} answered {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
}

async fn call(
    from: &str,
    secret: &str,
    path: &str,
    body: Option<Value>,
) -> Result<String, ClusterClientError> {
    let url = format!("{}{path}", from.trim_end_matches('/'));
    let unreachable = |e: reqwest::Error| ClusterClientError::Unreachable {
        url: url.clone(),
        reason: e.to_string(),
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(unreachable)?;
    let request = match body {
        Some(body) => http.post(&url).json(&body),
        None => http.get(&url),
    };
    let response = request
        .header(SECRET_HEADER, secret)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status().as_u16();
    let text = response.text().await.map_err(unreachable)?;
    match status {
        200 => Ok(text),
        403 => Err(ClusterClientError::WrongSecret { url }),
        _ => {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or(text);
            Err(ClusterClientError::Refused {
                url,
                status,
                detail,
            })
        }
    }
}

/// Prints the members' view: a table, or the JSON the member answered.
pub async fn status(from: &str, secret: &str, as_json: bool) -> Result<(), ClusterClientError> {
    let text = call(from, secret, "/_cluster/members", None).await?;
    if as_json {
        println!("{text}");
        return Ok(());
    }
    let view: MembersView =
        serde_json::from_str(&text).map_err(|e| ClusterClientError::Refused {
            url: from.to_owned(),
            status: 200,
            detail: format!("an answer that is not a members' view: {e}"),
        })?;
    print!("{}", status_table(&view));
    Ok(())
}

/// The members' view as a table.
pub fn status_table(view: &MembersView) -> String {
    let dash = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut out = format!(
        "leader {} (term {}), last log index {}\n{:>4}  {:<8} {:<9} {:<22} {:<22} {:>8} {:>8} {:>6}\n",
        view.leader_id,
        view.term,
        view.last_log_index,
        "id",
        "role",
        "",
        "api",
        "peer",
        "matched",
        "applied",
        "lag"
    );
    for m in &view.members {
        let mut role = m.role.clone();
        if m.id == view.leader_id {
            role = "leader".to_owned();
        }
        out.push_str(&format!(
            "{:>4}  {:<8} {:<9} {:<22} {:<22} {:>8} {:>8} {:>6}\n",
            m.id,
            role,
            if m.read_only { "read-only" } else { "" },
            m.api.as_deref().unwrap_or("-"),
            m.peer,
            dash(m.matched_index),
            dash(m.applied_index),
            dash(m.lag),
        ));
    }
    out
}

/// Removes node `id` through the member at `from`.
pub async fn remove(id: u64, from: &str, secret: &str) -> Result<(), ClusterClientError> {
    call(from, secret, "/_cluster/remove", Some(json!({ "id": id }))).await?;
    println!("node {id} removed");
    Ok(())
}
