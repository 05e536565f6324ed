package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"slices"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

// Op is the kind of a mutation.
type Op uint8

// Mutation kinds.
const (
	OpPut    Op = 1 // content: set (table, key) to value
	OpDelete Op = 2 // content: tombstone (table, key)
	OpAppend Op = 3 // index: set (table, owner, id) to payload
	OpRemove Op = 4 // index: tombstone (table, owner, id)
)

func (o Op) String() string {
	switch o {
	case OpPut:
		return "put"
	case OpDelete:
		return "delete"
	case OpAppend:
		return "append"
	case OpRemove:
		return "remove"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// Mutation is one change to one shard. Every mutation carries its version;
// applying it keeps the newer of it and what the shard holds.
type Mutation struct {
	Op      Op
	Shard   string
	Table   string
	Key     []byte // OpPut, OpDelete
	Value   []byte // OpPut
	Owner   uint64 // OpAppend, OpRemove
	ID      uint64 // OpAppend, OpRemove: a time-ordered ids.ID
	Payload []byte // OpAppend
	Version Version
}

// Size is what the mutation counts toward a batch's byte limit (Limits.MaxBatchBytes).
func (m *Mutation) Size() int { return len(m.Key) + len(m.Value) + len(m.Payload) }

// Outcome says what applying a mutation did.
type Outcome uint8

// Outcomes.
const (
	// Applied: the mutation's version is now the key's version.
	Applied Outcome = 1
	// Superseded: the shard already held this or a newer version; nothing
	// changed. Replays end here.
	Superseded Outcome = 2
	// BelowRetention: the entry's month was dropped by retention; nothing
	// changed.
	BelowRetention Outcome = 3
)

func (o Outcome) String() string {
	switch o {
	case Applied:
		return "applied"
	case Superseded:
		return "superseded"
	case BelowRetention:
		return "below-retention"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// resolved is a validated mutation with its shard number.
type resolved struct {
	*Mutation
	num    uint32
	month  uint32
	stripe int // set by lockStripes
}

// Apply applies a batch of mutations atomically and durably: when it returns
// nil every mutation is applied (or superseded) and fsynced; when it returns
// an error none is. Concurrent calls share fsyncs (Pebble's group commit).
// Mutations of one batch are applied in order, so a later mutation of the same
// key in the batch sees the earlier one.
func (s *Store) Apply(ctx context.Context, muts []Mutation) ([]Outcome, error) {
	return s.apply(ctx, muts, true, false, nil)
}

// apply applies muts atomically; with sync it returns once they are durable.
// extra, if set, adds more records to the same batch.
// With sorted, the mutations' content keys are expected in ascending order
// (an export page's are): they are read with one database iterator, moving
// forward, instead of a lookup each (a key out of order is looked up).
func (s *Store) apply(ctx context.Context, muts []Mutation, sync, sorted bool, extra func(b *pebble.Batch)) ([]Outcome, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if len(muts) == 0 && extra == nil {
		return nil, nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return nil, ErrClosed
	}
	rs, err := s.resolveLocked(muts)
	if err != nil {
		return nil, err
	}
	unlock, shared := s.lockStripes(rs)
	locked := true
	defer func() {
		if locked {
			unlock()
		}
	}()

	// Mutations read the records they replace. Within a batch of several,
	// a later mutation must see what an earlier one wrote (batchView).
	b := s.db.NewBatch()
	defer b.Close()
	ac := &applyCtx{batchView: batchView{db: s.db, b: b}}
	if len(rs) > 1 {
		// Two mutations of one content key share a stripe.
		ac.record, ac.repeats = true, shared
	}
	if sorted && len(rs) > 1 {
		// Created under the stripes: no write of these keys can land
		// between what it sees and this batch's commit.
		if ac.it, err = s.db.NewIter(nil); err != nil {
			return nil, fmt.Errorf("shard: %w", err)
		}
		defer ac.it.Close()
	}
	out := make([]Outcome, len(rs))
	for i := range rs {
		if out[i], err = s.applyOne(ac, &rs[i]); err != nil {
			return nil, err
		}
	}
	if extra != nil {
		extra(b)
	}
	if !sync {
		if b.Empty() {
			return out, nil
		}
		if err := b.Commit(pebble.NoSync); err != nil {
			return nil, fmt.Errorf("shard: commit: %w", err)
		}
		return out, nil
	}
	// Pebble makes a batch visible before its WAL fsync. So what this batch
	// read may not be durable yet: a mutation superseded by a newer version
	// in flight must not be acknowledged before that version is. A batch
	// that changes nothing therefore still commits a log record and waits
	// for its sync, which covers everything before it in the log.
	if b.Empty() {
		_ = b.LogData(nil, nil)
	}
	// The stripes only need to be held until the batch is visible: a later
	// writer of the same key then reads it, and its own sync covers ours.
	// Releasing them before the fsync lets overlapping batches share it.
	if err := s.db.ApplyNoSyncWait(b, pebble.Sync); err != nil {
		return nil, fmt.Errorf("shard: commit: %w", err)
	}
	unlock()
	locked = false
	if err := b.SyncWait(); err != nil {
		return nil, fmt.Errorf("shard: sync: %w", err)
	}
	return out, nil
}

// resolveLocked validates every mutation and resolves its shard. s.mu must
// be held.
func (s *Store) resolveLocked(muts []Mutation) ([]resolved, error) {
	if err := s.checkBatchLocked(muts); err != nil {
		return nil, err
	}
	now := s.opts.Clock.Now()
	rs := make([]resolved, len(muts))
	for i := range muts {
		r, err := s.resolveOneLocked(&muts[i], now)
		if err != nil {
			if len(muts) > 1 {
				return nil, fmt.Errorf("mutations[%d]: %w", i, err)
			}
			return nil, err
		}
		rs[i] = r
	}
	return rs, nil
}

// checkBatchLocked checks a batch's size against the limits.
func (s *Store) checkBatchLocked(muts []Mutation) error {
	lim := &s.opts.Limits
	if len(muts) > lim.MaxBatchMutations {
		return fmt.Errorf("%w: %d mutations, limit is %d", ErrTooLarge, len(muts), lim.MaxBatchMutations)
	}
	total := 0
	for i := range muts {
		total += muts[i].Size()
	}
	if total > lim.MaxBatchBytes {
		return fmt.Errorf("%w: %d bytes of keys, values and payloads, limit is %d", ErrTooLarge, total, lim.MaxBatchBytes)
	}
	return nil
}

func (s *Store) resolveOneLocked(m *Mutation, now time.Time) (resolved, error) {
	r := resolved{Mutation: m}
	if err := s.checkKindLocked(m); err != nil {
		return r, err
	}
	sh, err := s.shardLocked(m.Shard)
	if err != nil {
		return r, err
	}
	r.num = sh.Num
	if m.Op == OpAppend || m.Op == OpRemove {
		r.month = ids.ID(m.ID).Month()
	}
	return r, s.checkMutation(m, now)
}

// Check validates mutations as Apply would, except for their shards, which
// need not be on this store: a router checks a batch before journaling it
// for other nodes.
func (s *Store) Check(muts []Mutation) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.mu.closed {
		return ErrClosed
	}
	if err := s.checkBatchLocked(muts); err != nil {
		return err
	}
	now := s.opts.Clock.Now()
	for i := range muts {
		m := &muts[i]
		err := s.checkKindLocked(m)
		if err == nil {
			err = s.checkMutation(m, now)
		}
		if err != nil {
			if len(muts) > 1 {
				return fmt.Errorf("mutations[%d]: %w", i, err)
			}
			return err
		}
	}
	return nil
}

// checkKindLocked checks that m's table exists and has the kind m's op
// needs. s.mu must be held.
func (s *Store) checkKindLocked(m *Mutation) error {
	var want TableKind
	switch m.Op {
	case OpPut, OpDelete:
		want = KindContent
	case OpAppend, OpRemove:
		want = KindIndex
	default:
		return fmt.Errorf("%w: unknown mutation op %d", ErrInvalid, m.Op)
	}
	t, err := s.tableLocked(m.Table)
	if err != nil {
		return err
	}
	if t.Kind != want {
		return fmt.Errorf("%w: %s on table %q, which is a %s table", ErrWrongKind, m.Op, m.Table, t.Kind)
	}
	return nil
}

// checkMutation checks a mutation's version and fields against the limits.
func (s *Store) checkMutation(m *Mutation, now time.Time) error {
	lim := &s.opts.Limits
	if m.Version.IsZero() {
		return fmt.Errorf("%w: version is unset", ErrInvalid)
	}
	if ahead := m.Version.HLC.WallTime().Sub(now); ahead > s.opts.MaxClockAhead {
		return fmt.Errorf("%w: version timestamp %s is %s ahead of the local clock, bound is %s", ErrInvalid, m.Version.HLC, ahead.Round(time.Millisecond), s.opts.MaxClockAhead)
	}
	switch m.Op {
	case OpPut, OpDelete:
		if err := checkBytes("key", m.Key, 1, lim.MaxKeyBytes); err != nil {
			return err
		}
		if m.Op == OpPut {
			if err := checkBytes("value", m.Value, 1, lim.MaxValueBytes); err != nil {
				return err
			}
		} else if len(m.Value) > 0 {
			return fmt.Errorf("%w: value: a delete carries no value", ErrInvalid)
		}
	case OpAppend, OpRemove:
		if m.Owner == 0 {
			return fmt.Errorf("%w: owner is zero (unset)", ErrInvalid)
		}
		if err := ids.ID(m.ID).Validate(now, s.opts.MaxClockAhead); err != nil {
			return fmt.Errorf("%w: id: %w", ErrInvalid, err)
		}
		if m.Op == OpAppend {
			if err := checkBytes("payload", m.Payload, 0, lim.MaxPayloadBytes); err != nil {
				return err
			}
		} else if len(m.Payload) > 0 {
			return fmt.Errorf("%w: payload: a remove carries no payload", ErrInvalid)
		}
	}
	return nil
}

func checkBytes(field string, b []byte, min, max int) error {
	if len(b) < min {
		return fmt.Errorf("%w: %s is empty", ErrInvalid, field)
	}
	if len(b) > max {
		return fmt.Errorf("%w: %s is %d bytes, limit is %d", ErrInvalid, field, len(b), max)
	}
	return nil
}

var stripeSeed = maphash.MakeSeed()

// stripeOf returns the lock stripe of a mutation: content locks its key,
// index mutations lock their owner (they share the owner's month counts).
func stripeOf(r *resolved) int {
	var h maphash.Hash
	h.SetSeed(stripeSeed)
	var buf [13]byte
	binary.BigEndian.PutUint32(buf[:], r.num)
	switch r.Op {
	case OpPut, OpDelete:
		buf[4] = spaceContent
		h.Write(buf[:5])
		h.WriteString(r.Table)
		h.WriteByte(0)
		h.Write(r.Key)
	default:
		buf[4] = spaceIndex
		binary.BigEndian.PutUint64(buf[5:], r.Owner)
		h.Write(buf[:])
		h.WriteString(r.Table)
	}
	return int(h.Sum64() % numStripes)
}

// lockStripes locks the stripes of rs in ascending order (so batches never
// deadlock) and returns the unlock function, and whether two mutations of
// rs share a stripe.
func (s *Store) lockStripes(rs []resolved) (unlock func(), shared bool) {
	idx := make([]int, len(rs))
	for i := range rs {
		rs[i].stripe = stripeOf(&rs[i])
		idx[i] = rs[i].stripe
	}
	unlock, n := s.lockStripeSet(idx)
	return unlock, n < len(rs)
}

// lockStripeSet locks the stripes idx (sorting it) and returns the unlock
// function and how many distinct stripes it locked.
func (s *Store) lockStripeSet(idx []int) (func(), int) {
	slices.Sort(idx)
	idx = slices.Compact(idx)
	for _, i := range idx {
		s.stripes[i].Lock()
	}
	return func() {
		for _, i := range idx {
			s.stripes[i].Unlock()
		}
	}, len(idx)
}

// getter is what reads a single key: the database, a snapshot or a
// batchView.
type getter interface {
	Get(key []byte) ([]byte, io.Closer, error)
}

// getRecord reads a record. found is false if absent.
func getRecord(r getter, key []byte) (rec record, enc []byte, found bool, err error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return record{}, nil, false, nil
	}
	if err != nil {
		return record{}, nil, false, err
	}
	defer closer.Close()
	return decodeStored(key, v)
}

// decodeStored decodes the stored value v of key, copying it out of the
// reader's buffer.
func decodeStored(key, v []byte) (record, []byte, bool, error) {
	enc := append([]byte(nil), v...)
	rec, err := decodeRecord(enc)
	if err != nil {
		return record{}, nil, false, fmt.Errorf("%w (key %x)", err, key)
	}
	return rec, enc, true, nil
}

func getUint(r getter, key []byte, size int) (uint64, bool, error) {
	v, closer, err := r.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	defer closer.Close()
	switch {
	case size == 8 && len(v) == 8:
		return binary.BigEndian.Uint64(v), true, nil
	case size == 4 && len(v) == 4:
		return uint64(binary.BigEndian.Uint32(v)), true, nil
	}
	return 0, false, fmt.Errorf("shard: corrupt %d-byte integer at key %x", len(v), key)
}

// batchView reads what a batch being built holds, or else the database:
// what an indexed batch would read, without building an iterator over the
// batch and the database for each read. Every write that a later
// mutation of the batch may read goes through set (content records only
// when a content key may repeat: setContent), so a key missing from
// pending was not written by an earlier mutation. The extra writes of
// apply's caller (journal, outbox, import state) are never read back.
// Without record (a batch of one mutation, which reads nothing it wrote)
// set does not record.
type batchView struct {
	db      *pebble.DB
	b       *pebble.Batch
	record  bool
	pending map[string][]byte // the last value set for each key
}

func (v *batchView) Get(key []byte) ([]byte, io.Closer, error) {
	if val, ok := v.pending[string(key)]; ok {
		return val, noClose, nil
	}
	return v.db.Get(key)
}

var noClose = io.NopCloser(nil)

// set adds key = val to the batch. val must not change afterwards.
func (v *batchView) set(key, val []byte) error {
	if v.record {
		if v.pending == nil {
			v.pending = map[string][]byte{}
		}
		v.pending[string(key)] = val
	}
	return v.b.Set(key, val, nil)
}

// applyCtx is what the mutations of one batch write to and read through:
// the batch and the database under it, and for sorted content keys a
// forward iterator.
type applyCtx struct {
	batchView
	// repeats: a content key may come twice in the batch (two mutations
	// share a stripe), so content writes are recorded for the batch's
	// later reads. Without, only index writes are (an owner's entries
	// share its counts and months).
	repeats bool
	// it, if set, reads content keys in ascending order from the
	// database; last is the previous key it read. A content key is written
	// only by its own mutation, so one above last is in no earlier
	// mutation of the batch: the database's record is the current one.
	it   *pebble.Iterator
	last []byte
}

// setContent adds a content record to the batch, recorded for later reads
// only if its key may come again.
func (ac *applyCtx) setContent(key, enc []byte) error {
	if !ac.repeats {
		return ac.b.Set(key, enc, nil)
	}
	return ac.set(key, enc)
}

// content returns the record of a content key.
func (ac *applyCtx) content(key []byte) (record, []byte, bool, error) {
	if ac.it == nil || bytes.Compare(key, ac.last) <= 0 {
		return getRecord(&ac.batchView, key)
	}
	ac.last = append(ac.last[:0], key...)
	if !ac.it.SeekGE(key) || !bytes.Equal(ac.it.Key(), key) {
		return record{}, nil, false, ac.it.Error()
	}
	v, err := ac.it.ValueAndErr()
	if err != nil {
		return record{}, nil, false, err
	}
	return decodeStored(key, v)
}

// applyOne adds r to the batch if it wins over what ac reads.
func (s *Store) applyOne(ac *applyCtx, r *resolved) (Outcome, error) {
	rd := &ac.batchView
	switch r.Op {
	case OpPut, OpDelete:
		key := contentKey(r.num, r.Table, r.Key)
		enc := encodeRecord(r.Version, r.Op == OpDelete, r.Value)
		// Above its stripe's bound, the mutation wins whatever the key
		// holds, in the database or earlier in this batch (bound.go).
		if st, v := &s.stripes[r.stripe], uint64(r.Version.HLC); v > st.bound {
			if err := s.persistAtLeast(v); err != nil {
				return 0, err
			}
			st.bound = v
			if ac.it != nil && bytes.Compare(key, ac.last) > 0 {
				// A later mutation of this key must read the batch.
				ac.last = append(ac.last[:0], key...)
			}
			return Applied, ac.setContent(key, enc)
		}
		cur, curEnc, found, err := ac.content(key)
		if err != nil {
			return 0, err
		}
		if found && !wins(r.Version, enc, cur, curEnc) {
			return Superseded, nil
		}
		return Applied, ac.setContent(key, enc)
	}

	// Index entry.
	floor, err := s.retentionFloorLocked(r.num, r.Table)
	if err != nil {
		return 0, err
	}
	if r.month < floor {
		return BelowRetention, nil
	}
	key := indexKey(r.num, r.Table, r.month, r.Owner, r.ID)
	enc := encodeRecord(r.Version, r.Op == OpRemove, r.Payload)
	cur, curEnc, found, err := getRecord(rd, key)
	if err != nil {
		return 0, err
	}
	if found && !wins(r.Version, enc, cur, curEnc) {
		return Superseded, nil
	}
	if err := ac.set(key, enc); err != nil {
		return 0, err
	}
	if !found {
		// Mark the month once: rewriting the marker for every entry would
		// leave a version per entry for month scans to step over.
		mk := monthKey(r.num, r.Table, r.month)
		_, closer, err := rd.Get(mk)
		switch {
		case errors.Is(err, pebble.ErrNotFound):
			if err := ac.set(mk, nil); err != nil {
				return 0, err
			}
		case err != nil:
			return 0, err
		default:
			_ = closer.Close()
		}
	}
	wasLive, isLive := found && !cur.tombstone, r.Op == OpAppend
	if wasLive == isLive {
		return Applied, nil
	}
	ck := countKey(r.num, r.Table, r.month, r.Owner)
	n, _, err := getUint(rd, ck, 8)
	if err != nil {
		return 0, err
	}
	if isLive {
		n++
	} else {
		if n == 0 {
			return 0, fmt.Errorf("shard: count of owner %d month %s would go negative (corrupt count)", r.Owner, ids.MonthString(r.month))
		}
		n--
	}
	// A count that falls to zero is kept as zero, not deleted: a queue-like
	// owner's count goes between 0 and 1 all the time, and a read of a
	// deleted key steps over every version of it still in the memtable,
	// while a read of a set one stops at the newest. A zero count means
	// what an absent one does; digests skip it, and dropping the month
	// removes it.
	return Applied, ac.set(ck, binary.BigEndian.AppendUint64(nil, n))
}
