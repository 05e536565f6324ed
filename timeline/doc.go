// Package timeline keeps home timelines in memory and places them on
// nodes, after the timeline service Twitter described: every active
// user's home timeline is a short list of (status id, author id, flags)
// held three times, on three hash rings, so that a lost machine costs no
// rebuild and a read can be served by whichever replica answers first.
//
// This package is the in-process part: the lists (Store) and the placement
// (Rings). It does no I/O and starts no goroutines.
//
// # Timelines
//
// A timeline is a list of Entry, newest first by StatusID (status ids are
// ids.ID values, which sort by time), with each StatusID at most once and
// at most Capacity entries (default 800). A push of a new entry into a full
// timeline drops the oldest; a push of an entry older than the oldest of a
// full timeline, of an id already held, or of id 0 changes nothing. Entries
// are immutable: of two with one StatusID the first is kept. Because a
// bounded set of distinct ids keeps its newest Capacity whatever the order
// of the pushes, replicas that are given the same entries converge, even
// if the entries arrive in different orders (removes aside).
//
// A Store holds many timelines keyed by owner. It adds entries only to
// timelines it holds or has reserved: Replace installs a whole timeline
// (rebuilt from the durable index, copied from a sibling replica by
// read-repair, or empty for a new owner), Merge adds entries to one (or
// installs them, if it is not held) and Drop forgets one. A push for an
// owner not held is skipped rather than starting a timeline that would
// hold only the entries since and look whole; PushManyMissing reports the
// owners it skipped, and Has tells "held, maybe empty" from "not held
// here", which is what a reader needs to decide to repair or rebuild.
//
// A rebuild races with pushes: an entry pushed after the rebuild read the
// index and before it installed its result would be lost. So a rebuild
// first calls Reserve, which makes the owner pending: an empty timeline
// that takes pushes and removes but that readers (Has, Len, Range, Get,
// Each) see as not held. Merge or Replace of the rebuilt entries then
// holds the union of both; Unreserve forgets the owner if the rebuild
// fails. Merge into a held timeline leaves what Push of its entries would,
// so a sibling's copy or a late rebuild is safe to merge at any time.
//
// Range reads like the index does: max_id inclusive, since_id exclusive, 0
// for an open bound, newest first, up to limit (clamped to [1, Capacity]).
// A client pages back with max_id = (oldest id of the last page) - 1 and
// polls for news with since_id = the newest id it has.
//
// Each timeline is a ring buffer of 20-byte entries (EntrySize; a Go Entry
// would take 24) sorted by id, with no allocation per entry: a new newest
// entry is written after the newest, a full timeline drops its oldest by
// moving the ring's start, and an entry that arrives late is inserted by
// moving the shorter side of the ring by one slot. The buffer grows by
// doubling up to Capacity and never shrinks, so a full timeline of 800 is
// 16,000 bytes in a 16 KiB allocation. Bytes estimates the memory (within
// a few percent of the Go heap in TestBytesEstimate).
//
// Owners are spread over Options.Shards independently locked maps by a hash
// of the owner, so concurrent calls for different owners rarely wait; a
// lock is held for one map lookup and one list operation (Range, Read and
// Get allocate their result under it, Merge a larger buffer if it needs
// one). Read answers a replica's read (held? which entries? how many?)
// under one lock, where Has, Range and Len take it once each. Each lists a
// shard's owners under its lock, then takes it again for each timeline only
// to copy it, and calls its function with no lock held; EachWhere first
// asks, with no lock held, whether the caller wants an owner, and copies
// only those it does.
//
// # Placement
//
// Rings are three consistent-hash rings with different fixed seeds, each
// with VirtualNodes points (default 128) per node. The point of virtual
// node v of node n on ring k is mix(mix(FNV-1a(n) ^ seed_k) + v*φ), and an
// owner's position on ring k is mix(mix(owner) ^ seed_k), where mix is
// MurmurHash3's 64-bit finalizer: explicit functions, so every process and
// Go version places alike. Replicas(owner) takes, on ring k = 0, 1, 2 in
// turn, the first node clockwise from the owner's position that rings
// 0..k-1 have not taken. With three or more nodes the three replicas are
// on three different nodes; with two, slot 2 is ""; with one, slots 1 and
// 2 are. Slot 0 is the replica a read tries first.
//
// Consistent hashing moves few timelines when a node comes or goes.
// MovedCopies measures the data moved: for a 4th node added to 3 (or 1 of
// 4 removed) the new node takes 1/4 of the copies on random rings, the
// least a balanced placement can move; 0.240 was measured over 100,000
// owners, and 0.094 for an 11th node added to 10 (ideal 1/11). MovedFraction counts (owner, slot)
// assignments that change, including a replica that changes slot but not
// node: 0.343 for 3 to 4 nodes (13/36 = 0.361 on perfectly random rings).
// Each node's share of the replica slots was within 8% of even with 10
// nodes (exact with 3); a node's share of one slot, such as slot 0 where
// reads go first, varies more, up to 19% with 10 nodes, as the spread of a
// ring with 128 virtual nodes per node is about 1/sqrt(128) = 9%.
//
// # Costs
//
// n is the number of entries of the timeline, c the Store's capacity, k
// the entries or owners of a call, S the shards and P the points of a ring
// (nodes × VirtualNodes). The measured figures are the range of several
// runs of bench_test.go (-benchtime 1s) on a shared 2-vCPU AMD EPYC virtual
// machine, over 10,000 full timelines of 800 entries (160 MB, so most
// calls miss the CPU caches); a run there can be twice as fast as another.
//
//	operation          time                                  allocations           measured
//	Push, newest       O(1) (a full timeline drops its       0 (a growing buffer   35-75 ns
//	                   oldest in place)                      doubles, to c)
//	Push, late         O(log n) search + O(min(i, n-i))      0                     45-90 ns (within
//	                   moves, i its position                                       64 of the newest)
//	PushMany, k owners k × Push, one lock at a time          0                     65-110 ns per owner
//	PushManyMissing    as PushMany                           0, unless missing
//	                                                         grows
//	Range, Read        O(log n) for a bounded max_id or a    1, the result         220-530 ns for the
//	                   since_id inside the page, + O(limit)                        newest 20; 540-750
//	                                                                               at a max_id cursor
//	Get                O(n)                                  1, the result
//	Each, EachWhere    O(S + owners + entries), one lock     1 per timeline
//	                   at a time (EachWhere: the entries     copied (+ a list of
//	                   of the owners it keeps)               owners, reused)
//	Remove             O(log n) + O(min(i, n-i))             0
//	Len, Has           O(1)                                  0
//	Replace            O(k log k) sort outside the lock      2, the list and its
//	                   (+ O(n + k) merge of a pending one)   buffer (3 if entries
//	                                                         are dropped)
//	Merge              O(k log k) sort outside the lock      1, the sorted entries,
//	                   + O(n + k) merge under it             + 1 if a larger buffer
//	                                                         is needed (as Replace
//	                                                         if not held)
//	Reserve, k owners  O(k), one lock at a time              1 per owner reserved
//	Drop, Unreserve    O(1)                                  0
//	Owners, Bytes      O(S), each shard's lock in turn       0
//	NewRings           O(3 P log P)                          O(P)
//	Replicas           3 × O(log P) + a short walk           0                     175-200 ns, 10 nodes
package timeline
