package shard

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
)

// DefaultRangeLimit is the limit of a Range that gives none (or
// Limits.MaxRangeLimit if that is smaller).
const DefaultRangeLimit = 20

// Value is a live content value and its version.
type Value struct {
	Value   []byte
	Version Version
}

// Entry is a live index entry.
type Entry struct {
	ID      uint64
	Payload []byte
	Version Version
}

// RangeOptions select index entries, newest first.
type RangeOptions struct {
	// MaxID, when non-zero, returns only entries with id <= MaxID.
	MaxID uint64
	// SinceID, when non-zero, returns only entries with id > SinceID.
	SinceID uint64
	// Limit is the most entries returned: 0 means DefaultRangeLimit.
	Limit int
	// Offset skips that many of the owner's newest entries (page N is
	// Offset N*Limit). It is found from the per-month counts: whole months
	// are skipped without reading them. It cannot be combined with MaxID.
	Offset int
}

// MonthCount is the number of live entries of an owner in one month.
type MonthCount struct {
	Month uint32 // see ids.MonthOf
	Count uint64
}

// readTarget resolves a read's shard and checks its table's kind. s.mu must
// be held.
func (s *Store) readTargetLocked(shard, table string, want TableKind) (uint32, error) {
	if s.mu.closed {
		return 0, ErrClosed
	}
	t, err := s.tableLocked(table)
	if err != nil {
		return 0, err
	}
	if t.Kind != want {
		return 0, fmt.Errorf("%w: table %q is a %s table", ErrWrongKind, table, t.Kind)
	}
	sh, err := s.shardLocked(shard)
	if err != nil {
		return 0, err
	}
	return sh.Num, nil
}

// Get returns the live value of (table, key) in shard, or ErrNotFound.
func (s *Store) Get(ctx context.Context, shard, table string, key []byte) (Value, error) {
	vs, err := s.MultiGet(ctx, shard, table, [][]byte{key})
	if err != nil {
		return Value{}, err
	}
	if vs[0] == nil {
		return Value{}, fmt.Errorf("%w: key %q in table %q", ErrNotFound, key, table)
	}
	return *vs[0], nil
}

// MultiGet returns the live values of keys, nil where a key is absent or
// deleted. The values are read from one consistent snapshot.
func (s *Store) MultiGet(ctx context.Context, shard, table string, keys [][]byte) ([]*Value, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	lim := &s.opts.Limits
	if len(keys) > lim.MaxRangeLimit {
		return nil, fmt.Errorf("%w: %d keys, limit is %d", ErrOutOfRange, len(keys), lim.MaxRangeLimit)
	}
	for i, k := range keys {
		if err := checkBytes("key", k, 1, lim.MaxKeyBytes); err != nil {
			if len(keys) > 1 {
				return nil, fmt.Errorf("keys[%d]: %w", i, err)
			}
			return nil, err
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	num, err := s.readTargetLocked(shard, table, KindContent)
	if err != nil {
		return nil, err
	}
	var r pebble.Reader = s.db
	if len(keys) > 1 {
		snap := s.db.NewSnapshot()
		defer snap.Close()
		r = snap
	}
	out := make([]*Value, len(keys))
	for i, k := range keys {
		rec, _, found, err := getRecord(r, contentKey(num, table, k))
		if err != nil {
			return nil, err
		}
		if found && !rec.tombstone {
			out[i] = &Value{Value: rec.value, Version: rec.version}
		}
	}
	return out, nil
}

func (s *Store) checkRangeOptions(o *RangeOptions) error {
	lim := &s.opts.Limits
	if o.Limit == 0 {
		o.Limit = min(DefaultRangeLimit, lim.MaxRangeLimit)
	}
	if o.Limit < 0 || o.Limit > lim.MaxRangeLimit {
		return fmt.Errorf("%w: limit %d, must be in [1, %d]", ErrOutOfRange, o.Limit, lim.MaxRangeLimit)
	}
	if o.Offset < 0 || o.Offset > lim.MaxOffset {
		return fmt.Errorf("%w: offset %d, must be in [0, %d]", ErrOutOfRange, o.Offset, lim.MaxOffset)
	}
	if o.Offset > 0 && o.MaxID != 0 {
		return fmt.Errorf("%w: offset cannot be combined with max_id (use one cursor or the other)", ErrInvalid)
	}
	if o.MaxID>>63 != 0 {
		return fmt.Errorf("%w: max_id %d: top bit set, not an id", ErrInvalid, o.MaxID)
	}
	if o.SinceID>>63 != 0 {
		return fmt.Errorf("%w: since_id %d: top bit set, not an id", ErrInvalid, o.SinceID)
	}
	return nil
}

// Range returns an owner's live entries newest first, selected by o, from one
// consistent snapshot.
func (s *Store) Range(ctx context.Context, shard, table string, owner uint64, o RangeOptions) ([]Entry, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if owner == 0 {
		return nil, fmt.Errorf("%w: owner is zero (unset)", ErrInvalid)
	}
	if err := s.checkRangeOptions(&o); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	num, err := s.readTargetLocked(shard, table, KindIndex)
	if err != nil {
		return nil, err
	}
	if o.MaxID != 0 && o.SinceID != 0 && o.SinceID >= o.MaxID {
		return nil, nil
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()

	months, err := s.ownerMonths(snap, num, table, owner, o.MaxID, o.SinceID)
	if err != nil {
		return nil, err
	}
	// Page N: skip whole months by their counts.
	skip := o.Offset
	for len(months) > 0 && skip > 0 && uint64(skip) >= months[0].Count {
		skip -= int(months[0].Count)
		months = months[1:]
	}

	lo := tablePrefix(num, spaceIndex, table)
	hi := prefixEnd(lo)
	it, err := snap.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []Entry
	for _, mc := range months {
		prefix := indexOwnerPrefix(num, table, mc.Month, owner)
		seek := prefix
		if o.MaxID != 0 {
			seek = binary.BigEndian.AppendUint64(append([]byte(nil), prefix...), ^o.MaxID)
		}
		for it.SeekGE(seek); it.Valid() && bytes.HasPrefix(it.Key(), prefix); it.Next() {
			if len(it.Key()) != len(prefix)+8 {
				return nil, fmt.Errorf("shard: corrupt index key %x", it.Key())
			}
			id := ^binary.BigEndian.Uint64(it.Key()[len(prefix):])
			if o.SinceID != 0 && id <= o.SinceID {
				return out, it.Error()
			}
			rec, err := decodeRecord(it.Value())
			if err != nil {
				return nil, err
			}
			if rec.tombstone {
				continue
			}
			if skip > 0 {
				skip--
				continue
			}
			out = append(out, Entry{ID: id, Payload: append([]byte(nil), rec.value...), Version: rec.version})
			if len(out) == o.Limit {
				return out, nil
			}
		}
		if err := it.Error(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// ownerMonths lists the months (newest first) in which owner has live
// entries, between the months of maxID and sinceID (0: unbounded), with their
// counts.
func (s *Store) ownerMonths(r pebble.Reader, num uint32, table string, owner uint64, maxID, sinceID uint64) ([]MonthCount, error) {
	prefix := tablePrefix(num, spaceMonth, table)
	lo := prefix
	if maxID != 0 {
		lo = monthKey(num, table, ids.ID(maxID).Month())
	}
	minMonth := uint32(0)
	if sinceID != 0 {
		minMonth = ids.ID(sinceID).Month()
	}
	it, err := r.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: prefixEnd(prefix)})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []MonthCount
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()
		if len(k) != len(prefix)+4 {
			return nil, fmt.Errorf("shard: corrupt month marker %x", k)
		}
		month := ^binary.BigEndian.Uint32(k[len(prefix):])
		if month < minMonth {
			break
		}
		n, _, err := getUint(r, countKey(num, table, month, owner), 8)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			out = append(out, MonthCount{Month: month, Count: n})
		}
	}
	return out, it.Error()
}

// Count returns the number of an owner's live entries, in total and per
// month (newest first). It reads counts only.
func (s *Store) Count(ctx context.Context, shard, table string, owner uint64) (uint64, []MonthCount, error) {
	if err := ctx.Err(); err != nil {
		return 0, nil, err
	}
	if owner == 0 {
		return 0, nil, fmt.Errorf("%w: owner is zero (unset)", ErrInvalid)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	num, err := s.readTargetLocked(shard, table, KindIndex)
	if err != nil {
		return 0, nil, err
	}
	snap := s.db.NewSnapshot()
	defer snap.Close()
	months, err := s.ownerMonths(snap, num, table, owner, 0, 0)
	if err != nil {
		return 0, nil, err
	}
	var total uint64
	for _, m := range months {
		total += m.Count
	}
	return total, months, nil
}
