// Package gizzard models a site's shard map, after Twitter's Gizzard: the
// forwarding tables that map a key's hash to a tree of logical shards, whose
// leaves are physical shards on storage nodes. Replication and migration are
// tree shapes, changed online by operators through Changes.
//
// # The map
//
// A Map holds the site's Nodes, Tables, Shards and per-table Forwardings,
// a Version counting applied changes, and an Audit log with one entry per
// change. Ids and names (nodes, tables, shards) are 1 to 64 bytes of
// [A-Za-z0-9_.-]; a physical shard's id is also its name on its node.
//
// A key is routed in two steps. Lookup finds the forwarding of the key's
// table with the greatest Base at or below the key's hash (Hash of a
// content key, OwnerHash of an index owner); its Root names a shard tree.
// PlanWrite and PlanRead then resolve the tree to physical shards.
//
// Shard trees are trees: a shard has at most one parent, so a physical shard
// is in one tree only, and the root of every forwarding has no parent. Each
// kind of shard behaves like this:
//
//	| kind        | read                                       | write                                   |
//	|-------------|--------------------------------------------|-----------------------------------------|
//	| physical    | read this shard                            | write this shard                        |
//	| replicating | one child by weight; fail over to the next | every child, in parallel                |
//	| read_only   | passes through                             | refused: the whole write fails          |
//	| write_only  | refused: a replicating parent skips it     | passes through                          |
//	| blocked     | refused                                    | refused: the whole write fails          |
//	| black_hole  | nothing is there                           | accepted and dropped                    |
//
// Physical shards have no children; replicating shards have one or more,
// each with a weight (at least 1) that sets its share of first reads; the
// four wrappers (read_only, write_only, blocked, black_hole) have exactly
// one. A write to a tree reaches every physical shard not behind a refusing
// wrapper (WritePlan.Targets); the refusing wrappers are listed
// (WritePlan.Rejected), and the router (package router) then refuses the
// whole write with an error naming the wrapper: nothing is journaled, so no
// replica gets part of it. A read
// tries PlanRead's candidates in order; a tree with none fails with
// ErrBlocked when a blocked shard is on a read path, ErrNoReadable
// otherwise.
//
// # Changes
//
// The map changes only through Apply, one Change at a time. A change is a
// list of Steps applied atomically: each step is checked against the map as
// the previous steps left it, then the resulting map is validated as a
// whole, and either every step takes effect, the Version grows by one and
// an AuditEntry records who changed what, or nothing changes and the error
// names the failing step. Between steps a map may be incomplete (a
// replicating shard with no children yet, a wrapper awaiting its child);
// only the result must be valid. Check tries a change without applying it.
//
// Common shapes, each one change:
//
//	add a replica     create_shard physical "t-0-b" on node "n2";
//	                  create_shard write_only "t-0-b-w" over "t-0-b";
//	                  add_link "t-0" -> "t-0-b-w"
//	                  (once "t-0-b" is filled, "remove a wrapper" below
//	                  makes it readable)
//	insert a wrapper  create_shard read_only "w";
//	                  replace_child "r" -> "p" with "r" -> "w";
//	                  add_link "w" -> "p"
//	remove a wrapper  remove_link "w" -> "p";
//	                  replace_child "r" -> "w" with "r" -> "p";
//	                  delete_shard "w"
//	wrap a root       create_shard blocked "w";
//	                  remove_forwarding "posts" 0x0000000000000000 -> "p";
//	                  add_link "w" -> "p";
//	                  set_forwarding "posts" 0x0000000000000000 -> "w"
//	cut over          remove_forwarding "posts" 0x8000000000000000 -> "old";
//	                  set_forwarding "posts" 0x8000000000000000 -> "new"
//
// A shard is linked under a new parent only once its old link is gone, and
// a forwarding is set only at a free base, hence the orders above; naming
// the old root in remove_forwarding makes a re-point a compare-and-swap.
//
// # Replication
//
// The nameserver replicates the map by applying the same changes in the
// same order on every voter, and snapshots it as JSON. Apply is
// deterministic: it reads no clock (a change's At is set by its proposer
// and recorded in UTC), draws no random numbers, and never lets map
// iteration order reach a result or an error message. A Map round-trips
// exactly through encoding/json.
package gizzard
