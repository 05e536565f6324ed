package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/cockroachdb/pebble/v2"
)

// Cross-site replication publishes every locally-originated write to the
// other sites. Such a write's journal entry carries an outbox marker, which
// holds the entry in the journal, like a job does, until every remote site
// has applied past it:
//
//	0 'O' seq              outbox marker: entry seq is still owed to a remote site
//	0 'F'                  journal floor: the highest seq TrimOutbox removed (uint64)
//
// An entry with a marker outlives its last job; TrimOutbox removes the
// marker, and the entry goes with whichever of its marker and its last job
// goes last. Remote sites remember the seqs they applied, so a seq is never
// assigned twice: the floor keeps the sequence above every trimmed entry
// after a restart, even once the journal is empty.
const (
	metaOutbox       byte = 'O'
	metaJournalFloor byte = 'F'
)

// MaxOutboxEntries bounds the limit of OutboxEntries.
const MaxOutboxEntries = 10000

// trimBatch is how many markers TrimOutbox removes per batch (and per hold
// of the journal's lock).
const trimBatch = 512

var journalFloorKey = metaKey(metaJournalFloor, "")

func outboxKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(metaKey(metaOutbox, ""), seq)
}

// LogOptions are the options of ApplyLogged.
type LogOptions struct {
	// Outbox records the entry, with an outbox marker, even without
	// targets: the write is published to remote sites (OutboxEntries) and
	// its entry kept until TrimOutbox passes it.
	Outbox bool
	// State sets import states (read with ImportState) in the same batch:
	// a relay records the highest origin sequence it applied atomically
	// with the data. Keys are checked as ImportPage checks its state key.
	State map[string][]byte
}

// OutboxEntry is a journal entry still owed to remote sites.
type OutboxEntry struct {
	Seq  uint64
	Data []byte
}

// ApplyLogged is ApplyJournaled with options: it applies local mutations
// (each naming a shard of this store) and, in the same atomic batch and one
// fsync, records the entry if targets is not empty or o.Outbox is set, with
// one job per target and, with o.Outbox, an outbox marker; and sets every
// import state of o.State. It returns the outcomes of muts and the entry's
// sequence number (0 if no entry was recorded). Without targets, Outbox and
// State it is Apply. When it returns an error, none of this is recorded.
func (s *Store) ApplyLogged(ctx context.Context, muts []Mutation, entry []byte, targets []string, o LogOptions) ([]Outcome, uint64, error) {
	for k := range o.State {
		if err := checkStateKey(k); err != nil {
			return nil, 0, err
		}
	}
	logged := len(targets) > 0 || o.Outbox
	if !logged && len(o.State) == 0 {
		outs, err := s.Apply(ctx, muts)
		return outs, 0, err
	}
	// A target named twice is one job: count the distinct ones, or the
	// entry would wait for a job that does not exist.
	jobs := len(targets)
	if jobs > 1 {
		jobs = len(slices.Compact(slices.Sorted(slices.Values(targets))))
	}
	var seq uint64
	outs, err := s.apply(ctx, muts, true, false, func(b *pebble.Batch) {
		for k, v := range o.State {
			_ = b.Set(metaKey(metaImport, k), v, nil)
		}
		if !logged {
			return
		}
		seq = s.beginEntry(jobs, o.Outbox) // before any job can finish
		_ = b.Set(journalKey(seq), entry, nil)
		for _, t := range targets {
			_ = b.Set(jobKey(metaJob, seq, t), []byte("{}"), nil)
		}
		if o.Outbox {
			_ = b.Set(outboxKey(seq), nil, nil)
		}
	})
	if err != nil {
		if seq != 0 {
			s.abandonEntry(seq)
		}
	}
	if seq != 0 && o.Outbox {
		s.journal.mu.Lock()
		delete(s.journal.committing, seq)
		s.journal.mu.Unlock()
	}
	if err != nil {
		return nil, 0, err
	}
	return outs, seq, nil
}

// beginEntry assigns the next sequence number to an entry about to be
// committed with jobs jobs and, if outbox, a marker, and records both in
// memory.
func (s *Store) beginEntry(jobs int, outbox bool) uint64 {
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	// Assigned under the lock, seqs reach the outbox set in order.
	seq := s.journal.seq.Add(1)
	if jobs > 0 {
		if s.journal.jobs == nil {
			s.journal.jobs = map[uint64]int{}
		}
		s.journal.jobs[seq] = jobs
	}
	if outbox {
		s.journal.outbox.add(seq)
		if s.journal.committing == nil {
			s.journal.committing = map[uint64]struct{}{}
		}
		s.journal.committing[seq] = struct{}{}
	}
	return seq
}

// abandonEntry forgets the in-memory state of entry seq after its batch
// failed, unless the batch is visible all the same (its commit succeeded
// but its sync failed).
func (s *Store) abandonEntry(seq uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return // the in-memory state goes with the store
	}
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	_, closer, err := s.db.Get(journalKey(seq))
	if err == nil {
		_ = closer.Close()
		return
	}
	if !errors.Is(err, pebble.ErrNotFound) {
		return // unknown: keep it, as the entry may exist
	}
	delete(s.journal.jobs, seq)
	s.journal.outbox.remove(seq)
}

// OutboxEntries returns up to limit (1 to MaxOutboxEntries) entries with an
// outbox marker and a seq above after, in seq order. The entries it returns
// are durable: it syncs the log first (sharing the fsync with concurrent
// writers), so no remote site applies an entry that a crash could take
// back, and its seq given to another write.
func (s *Store) OutboxEntries(after uint64, limit int) ([]OutboxEntry, error) {
	if limit < 1 || limit > MaxOutboxEntries {
		return nil, fmt.Errorf("%w: outbox limit %d, want 1 to %d", ErrInvalid, limit, MaxOutboxEntries)
	}
	if after == math.MaxUint64 {
		return nil, nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	// Entries at or past the lowest one still committing stay out: they
	// may become visible out of order. Everything below it is visible (or
	// abandoned) before the snapshot is taken.
	bound := uint64(math.MaxUint64)
	s.journal.mu.Lock()
	for seq := range s.journal.committing {
		bound = min(bound, seq)
	}
	// Entries begun after this lock is released are out too: one of them
	// may become visible before another begun earlier, and the snapshot
	// below is taken after the release.
	bound = min(bound, s.journal.seq.Load()+1)
	// The in-memory set holds every marker (and those of entries still
	// committing): with none in (after, bound) there is nothing to read,
	// which is every call of a publisher that has caught up.
	live := s.journal.outbox.live()
	i, _ := slices.BinarySearch(live, after+1)
	pending := i < len(live) && live[i] < bound
	s.journal.mu.Unlock()
	if !pending {
		return nil, nil
	}
	// A snapshot: a marker read and its entry are of one instant, even if
	// TrimOutbox runs meanwhile.
	snap := s.db.NewSnapshot()
	defer snap.Close()
	p := metaKey(metaOutbox, "")
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: outboxKey(after + 1), UpperBound: prefixEnd(p)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []OutboxEntry
	for it.First(); it.Valid() && len(out) < limit; it.Next() {
		k := it.Key()[len(p):]
		if len(k) != 8 {
			return nil, fmt.Errorf("shard: corrupt outbox key %x", it.Key())
		}
		seq := binary.BigEndian.Uint64(k)
		if seq >= bound {
			break
		}
		v, closer, err := snap.Get(journalKey(seq))
		if errors.Is(err, pebble.ErrNotFound) {
			return nil, fmt.Errorf("shard: outbox marker %d without its journal entry", seq)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, OutboxEntry{Seq: seq, Data: bytes.Clone(v)})
		_ = closer.Close()
	}
	if err := it.Error(); err != nil {
		return nil, err
	}
	// ApplyLogged's batch is visible before its fsync completes; the sync
	// covers everything read above, which precedes it in the log.
	if len(out) > 0 {
		if err := s.db.LogData(nil, pebble.Sync); err != nil {
			return nil, fmt.Errorf("shard: sync: %w", err)
		}
	}
	return out, nil
}

// TrimOutbox removes the outbox markers of seq up to upTo (every remote
// site applied past them), deletes each such entry that has no job left,
// pending or in the error queue (its last job deletes it otherwise), and
// returns how many markers it removed. It works in bounded batches and
// may run concurrently with writers and with jobs finishing. It does not
// sync: a crash may bring back the last markers it removed (and entries),
// which only delays trimming; call it again.
func (s *Store) TrimOutbox(upTo uint64) (int, error) {
	removed := 0
	var from uint64
	for {
		n, next, done, err := s.trimOutboxBatch(from, upTo)
		removed += n
		if err != nil || done {
			return removed, err
		}
		from = next
	}
}

// trimOutboxBatch removes up to trimBatch markers of seq in [from, upTo]
// and returns how many, where to continue, and whether it is done.
func (s *Store) trimOutboxBatch(from, upTo uint64) (n int, next uint64, done bool, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, 0, true, ErrClosed
	}
	// Held across the job check and the commit, as removeJob holds it
	// across its last-job check and commit: whichever of the marker and
	// the last job goes second sees the other gone and deletes the entry.
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	ob := &s.journal.outbox
	live := ob.live()
	if len(live) == 0 {
		return 0, 0, true, nil
	}
	// Every marker in the database is in the set: starting at its first
	// skips the deletions of earlier trims.
	from = max(from, live[0])
	if from > upTo {
		return 0, 0, true, nil
	}
	p := metaKey(metaOutbox, "")
	hi := prefixEnd(p)
	if upTo < math.MaxUint64 {
		hi = outboxKey(upTo + 1)
	}
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: outboxKey(from), UpperBound: hi})
	if err != nil {
		return 0, 0, true, err
	}
	var seqs []uint64
	for it.First(); it.Valid() && len(seqs) < trimBatch; it.Next() {
		k := it.Key()[len(p):]
		if len(k) != 8 {
			_ = it.Close()
			return 0, 0, true, fmt.Errorf("shard: corrupt outbox key %x", it.Key())
		}
		seqs = append(seqs, binary.BigEndian.Uint64(k))
	}
	if err := it.Close(); err != nil {
		return 0, 0, true, err
	}
	if len(seqs) == 0 {
		return 0, 0, true, nil
	}
	left, err := s.jobsLeftLocked(seqs)
	if err != nil {
		return 0, 0, true, err
	}
	last := seqs[len(seqs)-1]
	b := s.db.NewBatch()
	defer b.Close()
	for i, seq := range seqs {
		_ = b.Delete(outboxKey(seq), nil)
		if !left[i] {
			_ = b.Delete(journalKey(seq), nil)
		}
	}
	if last > ob.floor {
		_ = b.Set(journalFloorKey, binary.BigEndian.AppendUint64(nil, last), nil)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return 0, 0, true, fmt.Errorf("shard: trim outbox: %w", err)
	}
	ob.floor = max(ob.floor, last)
	ob.removeSorted(seqs)
	for i, seq := range seqs {
		if !left[i] {
			delete(s.journal.jobs, seq) // a miscount's leftover, if any
		}
	}
	return len(seqs), last + 1, len(seqs) < trimBatch || last == math.MaxUint64, nil
}

// jobsLeftLocked reports, for each of seqs (ascending), whether the
// database holds a job of it, pending or in the error queue. The database
// is the truth here, not the in-memory counts. s.journal.mu must be held.
func (s *Store) jobsLeftLocked(seqs []uint64) ([]bool, error) {
	left := make([]bool, len(seqs))
	for _, kind := range []byte{metaJob, metaErrorJob} {
		it, err := s.db.NewIter(&pebble.IterOptions{
			LowerBound: jobKey(kind, seqs[0], ""),
			UpperBound: prefixEnd(jobKey(kind, seqs[len(seqs)-1], "")),
		})
		if err != nil {
			return nil, err
		}
		for i, seq := range seqs {
			if left[i] {
				continue
			}
			p := jobKey(kind, seq, "")
			left[i] = it.SeekGE(p) && bytes.HasPrefix(it.Key(), p)
		}
		if err := it.Close(); err != nil {
			return nil, err
		}
	}
	return left, nil
}

// OutboxStats returns how many entries hold an outbox marker (counting
// those of ApplyLogged calls still committing) and the oldest and newest
// one's seq (0 if none). It reads memory only.
func (s *Store) OutboxStats() (count int, oldest, newest uint64, err error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return 0, 0, 0, ErrClosed
	}
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	live := s.journal.outbox.live()
	if len(live) == 0 {
		return 0, 0, 0, nil
	}
	return len(live), live[0], live[len(live)-1], nil
}

// loadOutbox loads the outbox markers into memory and returns the journal
// floor.
func (s *Store) loadOutbox() (floor uint64, err error) {
	v, closer, err := s.db.Get(journalFloorKey)
	switch {
	case err == nil:
		if len(v) != 8 {
			_ = closer.Close()
			return 0, fmt.Errorf("shard: corrupt journal floor (%d bytes)", len(v))
		}
		floor = binary.BigEndian.Uint64(v)
		_ = closer.Close()
	case !errors.Is(err, pebble.ErrNotFound):
		return 0, err
	}
	p := metaKey(metaOutbox, "")
	it, err := s.db.NewIter(&pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)})
	if err != nil {
		return 0, err
	}
	defer it.Close()
	ob := outboxSet{floor: floor}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[len(p):]
		if len(k) != 8 {
			return 0, fmt.Errorf("shard: corrupt outbox key %x", it.Key())
		}
		ob.seqs = append(ob.seqs, binary.BigEndian.Uint64(k))
	}
	if err := it.Error(); err != nil {
		return 0, err
	}
	s.journal.mu.Lock()
	s.journal.outbox = ob
	s.journal.mu.Unlock()
	return floor, nil
}

// outboxSet is the in-memory set of the seqs with an outbox marker (8
// bytes each), in ascending order, and the journal floor. Its methods need
// s.journal.mu. Markers go in at the end and out from the front, so the
// live seqs are seqs[head:]; the front is reclaimed once it outweighs them.
type outboxSet struct {
	seqs  []uint64
	head  int
	floor uint64
}

func (o *outboxSet) live() []uint64 { return o.seqs[o.head:] }

func (o *outboxSet) has(seq uint64) bool {
	_, ok := slices.BinarySearch(o.live(), seq)
	return ok
}

func (o *outboxSet) add(seq uint64) {
	live := o.live()
	if len(live) == 0 || live[len(live)-1] < seq {
		o.seqs = append(o.seqs, seq)
		return
	}
	if i, ok := slices.BinarySearch(live, seq); !ok {
		o.seqs = slices.Insert(o.seqs, o.head+i, seq)
	}
}

func (o *outboxSet) remove(seq uint64) {
	if i, ok := slices.BinarySearch(o.live(), seq); ok {
		o.seqs = slices.Delete(o.seqs, o.head+i, o.head+i+1)
		o.compact()
	}
}

// removeSorted removes seqs (ascending). It costs the length of the live
// prefix up to the last of them, not of the whole set: the seqs kept in
// that prefix move up against the rest.
func (o *outboxSet) removeSorted(seqs []uint64) {
	if len(seqs) == 0 {
		return
	}
	live := o.live()
	end, ok := slices.BinarySearch(live, seqs[len(seqs)-1])
	if ok {
		end++
	}
	w, j := end, len(seqs)-1
	for r := end - 1; r >= 0; r-- {
		v := live[r]
		for j >= 0 && seqs[j] > v {
			j--
		}
		if j >= 0 && seqs[j] == v {
			j--
			continue
		}
		w--
		live[w] = v
	}
	o.head += w
	o.compact()
}

// compact releases the front of seqs once it is at least as long as the
// live part.
func (o *outboxSet) compact() {
	switch n := len(o.seqs) - o.head; {
	case n == 0:
		o.seqs, o.head = nil, 0
	case o.head >= 1024 && o.head >= n:
		o.seqs, o.head = slices.Clone(o.seqs[o.head:]), 0
	}
}

// OutboxFloor returns the highest seq TrimOutbox has removed: entries up to
// it can no longer be listed, nor published again.
func (s *Store) OutboxFloor() uint64 {
	s.journal.mu.Lock()
	defer s.journal.mu.Unlock()
	return s.journal.outbox.floor
}
