// Package home serves a site's home timelines: the Timelines gRPC service
// of a node. It joins three things the rest of Aviary provides:
//
//   - the in-memory lists and the three hash rings of package timeline,
//     held on the site's timeline nodes;
//   - the durable index, reached through the node's router like any data:
//     the index table user_timeline (author -> status ids: what each author
//     posted), following (user -> ids of the users they follow), followers
//     (author -> follower ids), fanout (the fan-out queue) and celebrities
//     (the authors whose posts are merged in at read time);
//   - the shard map, which says which nodes hold timelines.
//
// # Writes
//
// Post appends the status to the author's user_timeline and, in the same
// router batch (journaled once, so a crash never keeps one without the
// other), one entry per site of the site map to that site's fan-out queue:
// the index owner QueueOwner(site, p) of the fanout table, p a hash of the
// status id over Config.FanoutPartitions. It returns once the batch is
// durable (accept fast, serve later). Because the queue entries are
// ordinary writes, the relay carries them to the other sites like any
// write, and each site's fan-out workers deliver the post to that site's
// timelines: the timelines of a site are never replicated themselves.
//
// Fan-out workers run on the timeline nodes; partition p is worked by the
// p mod n-th of the n live timeline nodes in id order (each node pings its
// siblings every 250ms, and one that fails its pings for 1.5s loses its
// partitions until it answers again). A worker counts its queue (the
// per-month counts: no scan), reads its oldest entries, pages through each
// author's followers, pushes the entry to the author's own timeline and
// every follower's, batched into ReplicaPush calls per node (at most
// 100,000 owners each), and then removes the queue entries (one atomic
// batch). Each ReplicaPush call is bounded by ReplicaTimeout; after one
// fails, pushes to that node are skipped for a second, and then one goes
// to see whether it answers (aviary_timeline_pushes_skipped_total), so a
// node that hangs does not hold every batch. A replica that fails a push,
// or lacks a timeline a sibling holds, is repaired from that sibling
// (retried every second, about two minutes; while the replica is taken
// for down a retry fails without a call). When the bounded repair queue
// is full, or a repair's retries run out (unless no sibling held the
// timeline then: the next read rebuilds it), its node is marked behind
// instead, and once it answers it is caught up whole (catchup.go): every
// timeline the rings place on it is merged into it from each other ring
// node, as a restarted node refills itself. A push is idempotent
// (timelines deduplicate by id), so a worker that dies
// between the pushes and the removal, or two workers that briefly share a
// partition after a membership or liveness change, deliver twice in effect
// once.
// Authors in the celebrities table are not pushed to their followers:
// Read merges their newest entries in from user_timeline (hybrid push and
// pull). Follow marks an author a celebrity once their follower count
// passes Config.CelebrityFollowers; an author is never unmarked.
//
// # Reads
//
// Read asks the first replica of each timeline (this node's own memory if
// it is a replica, answered inline, else slot 0 of the rings) and,
// if it has not answered after the hedge delay (the p95 of recent replica
// reads, within Config.HedgeMin..HedgeMax), the next; a replica that
// answers "not held" or fails is passed over at once, and a replica that
// failed is tried last for a second. The first held answer wins. Replicas
// that answered "not held" are then repaired in the background: the
// winner's whole timeline is merged into them. When no replica holds a
// timeline it is rebuilt from the index: the replicas are reserved (so
// pushes that arrive meanwhile are kept), the newest Capacity entries of
// the user and of every non-celebrity they follow are read from
// user_timeline and merged, and the result is merged into every replica.
//
// A timeline node that starts, or that the rings newly name as a replica
// of some timelines, asks each sibling for the whole timelines it should
// hold (ReplicaExport, as columns) and merges them. Merging is a union of
// immutable entries, so it is safe at any time and in any order. A sibling
// that sends nothing for ReplicaTimeout is given up, taken for down and
// asked again later. The siblings are asked all at once: one that hangs
// holds back none of the others' copies.
//
// # Limits
//
//   - A Remove that misses a replica (down at the time) can come back with
//     a later repair or refill from that replica's copy.
//   - A Follow does not backfill the followee's older posts into the
//     follower's timeline; a rebuild does include them.
//   - The celebrities table is read as one index page of at most 1000.
//   - Between a post's queue entry becoming visible and the post itself
//     becoming visible in user_timeline there is a short window in which a
//     rebuild can miss the post (the push skips a timeline not yet reserved).
//   - A node behind answers reads, its own local-first ones too, from its
//     stale copies until its catch-up is done. It stays behind until every
//     other ring node has answered a catch-up. A catch-up does not redo
//     the Removes the node
//     missed; it skips a sibling's timelines that are being rebuilt; and
//     the marking is lost if the node that made it restarts first.
//   - A repair copies from every other replica that answers and holds the
//     timeline; if the one that took a push is down at the time and the
//     other missed it too, the repair is done without it.
package home
