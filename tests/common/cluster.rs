//! A cluster of real `soundwave node` processes on fixed loopback ports, sharing one
//! `[cluster]` configuration: started together, observed through `/health/` and the peer
//! API's state digest.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::node::Node;
use crate::process::{free_port, wait_for};

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
        TestCluster::start_on(&vec!["127.0.0.1"; n], extra)
    }

    /// Starts one member per host (ids 1..=n), each listening on its own loopback address
    /// for both its API and its peer port.
    pub fn start_on(hosts: &[&str], extra: &str) -> TestCluster {
        let n = hosts.len();
        let apis: Vec<String> = hosts
            .iter()
            .map(|host| format!("{host}:{}", free_port()))
            .collect();
        let peers: Vec<String> = hosts
            .iter()
            .map(|host| format!("{host}:{}", free_port()))
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

    /// Starts node `id` outside the configuration, joining through node 0's API
    /// (`--join`, `--peer-listen`, and `--read-only` when asked); its index in `nodes`.
    pub fn join(&mut self, id: u64, read_only: bool) -> usize {
        let api = format!("127.0.0.1:{}", free_port());
        let peer = format!("127.0.0.1:{}", free_port());
        let mut builder = Node::builder()
            .node_id(id)
            .listen(&api)
            .no_admin()
            .env("SOUNDWAVE_JOIN", self.nodes[0].base_url())
            .env("SOUNDWAVE_PEER_LISTEN", &peer)
            .env("SOUNDWAVE_CLUSTER_SECRET", CLUSTER_SECRET);
        if read_only {
            builder = builder.env("SOUNDWAVE_READ_ONLY", "true");
        }
        self.nodes.push(builder.start());
        self.peers.push(peer);
        self.nodes.len() - 1
    }

    /// The members' view (`GET /_cluster/members` with the secret) through node `i`.
    pub async fn members(&self, i: usize) -> Option<Value> {
        let response = self
            .client
            .get(self.nodes[i].url("/_cluster/members"))
            .header(SECRET_HEADER, CLUSTER_SECRET)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Waits until the members' view through node `i` shows node `id` with `role`
    /// (`voter`, `learner`), or without it for `None`; gives the view.
    pub async fn member_becomes(&self, i: usize, id: u64, role: Option<&str>) -> Value {
        wait_for(
            &format!("node {id} to be {role:?} in the members' view"),
            Duration::from_secs(60),
            || async {
                let view = self.members(i).await?;
                let member = view["members"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == id)
                    .cloned();
                let now = member.as_ref().and_then(|m| m["role"].as_str());
                (now == role).then_some(view)
            },
        )
        .await
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

    /// How long after `since` node `i` first takes an order (one of `product`) again,
    /// retrying while it answers 503. The figures of the failover notes; never asserted.
    pub async fn writes_back_after(
        &self,
        i: usize,
        token: &str,
        product: i64,
        since: Instant,
    ) -> Duration {
        let node = &self.nodes[i];
        loop {
            let response = node.order(token, &[(product, 1)]).await;
            match response.status {
                201 => return since.elapsed(),
                503 => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("unexpected {other}: {}", response.text),
            }
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "writes never came back on node {}",
                i + 1
            );
        }
    }
}

/// Cuts the traffic between one loopback address and others, both ways, with
/// policy-routing rules (`ip rule ... prohibit`): new connections are refused and packets
/// on open ones vanish, as behind a firewall, while clients on 127.0.0.1 still reach every
/// address. Needs root and `ip`; where the machine refuses, `cut` says why and gives
/// `None`. Dropping it heals the partition and puts the routing back as it was.
pub struct LoopbackPartition {
    rules: Vec<Vec<String>>,
}

/// Where the partition's rules sit: before the `local` table, which moves from preference
/// 0 (before everything) to `LOCAL_MOVED_PREF` while a partition is in place.
const PARTITION_PREF: &str = "10";
const LOCAL_MOVED_PREF: &str = "100";

fn ip_rule(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .arg("rule")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

impl LoopbackPartition {
    pub fn cut(isolated: &str, others: &[&str]) -> Option<LoopbackPartition> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: a loopback partition needs root (CI runs as root)");
            return None;
        }
        // A leftover of an interrupted run is fine: the rule is already where it must be.
        let moved = ip_rule(&["add", "pref", LOCAL_MOVED_PREF, "lookup", "local"])
            .or_else(|e| if e.contains("exists") { Ok(()) } else { Err(e) })
            .and_then(|()| ip_rule(&["del", "pref", "0", "lookup", "local"]));
        let mut partition = LoopbackPartition { rules: Vec::new() };
        if let Err(e) = moved {
            eprintln!("skipped: policy routing is not available here: {e}");
            return None;
        }
        for other in others {
            for (from, to) in [(isolated, *other), (*other, isolated)] {
                let rule: Vec<String> =
                    ["pref", PARTITION_PREF, "from", from, "to", to, "prohibit"]
                        .map(str::to_owned)
                        .to_vec();
                let args: Vec<&str> = rule.iter().map(String::as_str).collect();
                if let Err(e) = ip_rule(&[&["add"], args.as_slice()].concat()) {
                    eprintln!("skipped: cannot add a prohibit rule: {e}");
                    return None;
                }
                partition.rules.push(rule);
            }
        }
        Some(partition)
    }
}

impl Drop for LoopbackPartition {
    fn drop(&mut self) {
        for rule in &self.rules {
            let args: Vec<&str> = rule.iter().map(String::as_str).collect();
            let _ = ip_rule(&[&["del"], args.as_slice()].concat());
        }
        let _ = ip_rule(&["add", "pref", "0", "lookup", "local"]);
        let _ = ip_rule(&["del", "pref", LOCAL_MOVED_PREF, "lookup", "local"]);
    }
}
