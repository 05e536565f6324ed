// Package ops is the operator command line of an Aviary site, in the spirit
// of Twitter's gizzmo: it reads and changes the site's shard map through
// any node's Nameserver service, inspects nodes and router jobs, and runs a
// local development site.
//
// # Reading
//
// Read commands ask the node at --addr for its copy of the shard map
// (Nameserver.GetMap) and print it as aligned tables, or as JSON with
// --json: nodes, ping, tables, shards, forwardings, tree show, lookup, audit
// and version. nodes and ping also ask every node for its Status and gRPC
// health, so they show which nodes lag behind or cannot be reached.
//
// # Changing
//
// Every change is one gizzard.Change sent with Nameserver.Propose to the
// node at --addr, which forwards it to the raft leader; its steps apply
// atomically or not at all, and the audit log records --who. The low-level
// commands map to one step each (shard create, link add, forwarding set, ...);
// the replica commands build the multi-step shapes of the gizzard package
// documentation, so that a replica is added behind a write_only wrapper,
// promoted by swapping the wrapper for its leaf, and removed with its
// wrapper, each in one change.
//
// # Migrations
//
// migrate, split and rebalance move data online; each step of a migration is
// one change of the map, made as a compare-and-swap on the migration's state,
// so any ops process carries on a migration another one left (see
// docs/migration.md). migrations lists them; migrate pause, resume and
// cancel control them.
//
// # Verification and repair
//
// verify compares every readable copy of the data by digests, across the
// replicas of a site or, with --sites, across sites, narrowing a
// difference down to the records that differ; repair sends each copy that
// lacks a record's newest version that version and verifies again. Both
// are antiEntropy, which the DR drill uses too (docs/antientropy.md).
//
// # Sites and replication
//
// sites lists and changes the site map; relay status and conflicts show
// cross-site replication as the site's nodes see it (docs/replication.md).
//
// # Development sites
//
// dev up builds cmd/node and starts a site of several node processes on
// loopback ports, each in its own process group so that it outlives the ops
// process; with --sites it starts several sites and a relay (cmd/relay) for
// each; DIR/site.json records their pids and addresses for dev status and
// dev down. Dev deployments run mutual TLS unless dev up --plaintext:
// DIR/certs holds their CA and certificates (made with the code of certs
// init and issue), nodes and relays are started with them, and ops
// presents DIR/certs/admin.crt.
//
// # TLS
//
// certs init and issue create a deployment's CA and certificates. Every
// connection of a session presents the material resolveTLS picks: the
// --tls-* flags, else the admin certificate of the dev deployment the
// command works on (./aviary-dev by default), else none (plaintext); see
// docs/security.md.
//
// NewCommand returns the command tree; cmd/ops is its thin main.
package ops
