//! A cluster of real `soundwave node` processes on fixed loopback ports, sharing one
//! `[cluster]` configuration: started together, observed through `/health/` and the peer
//! API's state digest.

use std::time::Duration;

use serde_json::Value;

use super::Node;
use super::{free_port, wait_for};

pub const CLUSTER_SECRET: &str = "test-cluster-secret";
/// The peer header carrying the secret.
pub const SECRET_HEADER: &str = "x-soundwave-cluster-secret";

pub struct TestCluster {
    pub nodes: Vec<Node>,
    pub peers: Vec<String>,
    client: reqwest::Client,
}

impl TestCluster {
    /// Starts `n` members (ids 1..=n) at once; `extra` is added to every node's config.
    pub fn start(n: usize, extra: &str) -> TestCluster {
        let apis: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let peers: Vec<String> = (0..n)
            .map(|_| format!("127.0.0.1:{}", free_port()))
            .collect();
        let mut config = format!(
            "[cluster]\nsecret = \"{CLUSTER_SECRET}\"\nheartbeat_ms = 100\nelection_timeout_ms = 400\n{extra}\n"
        );
        for i in 0..n {
            config.push_str(&format!(
                "[[cluster.nodes]]\nid = {}\napi = \"{}\"\npeer = \"{}\"\n",
                i + 1,
                apis[i],
                peers[i]
            ));
        }
        // A node is ready only once the cluster has a leader, so all start together.
        let nodes = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..n)
                .map(|i| {
                    let config = config.clone();
                    let api = apis[i].clone();
                    scope.spawn(move || {
                        Node::builder()
                            .node_id(i as u64 + 1)
                            .listen(&api)
                            .config(&config)
                            .start()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("node start"))
                .collect()
        });
        TestCluster {
            nodes,
            peers,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client"),
        }
    }

    /// The `cluster` object of a node's `/health/`, if it answers.
    pub async fn cluster_status(&self, i: usize) -> Option<Value> {
        let response = self
            .client
            .get(self.nodes[i].url("/health/"))
            .send()
            .await
            .ok()?;
        let body: Value = response.json().await.ok()?;
        Some(body["cluster"].clone())
    }

    /// The index (0-based) of the node that leads, once every running node agrees.
    pub async fn leader(&mut self) -> usize {
        let running: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_running())
            .collect();
        let this: &TestCluster = self;
        wait_for(
            "a leader every running node agrees on",
            Duration::from_secs(20),
            || {
                let running = running.clone();
                async move {
                    let mut leader = None;
                    for i in running {
                        let status = this.cluster_status(i).await?;
                        let id = status["leader_id"].as_u64()?;
                        if leader.is_some_and(|l| l != id) {
                            return None;
                        }
                        leader = Some(id);
                    }
                    leader.map(|id| id as usize - 1)
                }
            },
        )
        .await
    }

    /// `(applied_index, digest)` of node `i`, from the peer API.
    pub async fn digest(&self, i: usize) -> Option<(u64, String)> {
        let body: Value = self
            .client
            .get(format!("http://{}/_cluster/digest", self.peers[i]))
            .header(SECRET_HEADER, CLUSTER_SECRET)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        Some((
            body["applied_index"].as_u64()?,
            body["digest"].as_str()?.to_owned(),
        ))
    }

    /// Waits until the given nodes hold the same state at the same applied index.
    pub async fn converged(&self, which: &[usize]) -> String {
        wait_for(
            "the nodes to converge on one state",
            Duration::from_secs(30),
            || async {
                let mut seen = Vec::new();
                for &i in which {
                    seen.push(self.digest(i).await?);
                }
                let first = seen.first()?.clone();
                seen.iter().all(|d| *d == first).then_some(first.1)
            },
        )
        .await
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to node `i`.
    pub fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i].pid().expect("node runs");
        let ok = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{signal} {pid}");
    }
}
