package shard

import (
	"bytes"
	"context"
	"fmt"
)

// ExportPage reads up to limit records of a shard, in key order, starting
// after the shard-relative key after (nil: from the start), and returns
// them as versioned mutations that rebuild them when applied to another
// copy of the shard: content records as puts or deletes, index entries as
// appends or removes (with their tombstones, so that a copy also learns
// what was deleted). Counts and month markers are not exported: applying
// the entries rebuilds them. It returns the key to resume after and
// whether the shard is exhausted.
//
// Each page is read from its own consistent view. A copy made of pages
// taken while the shard changes is still exact once every write made
// meanwhile also reached the copy (a migration routes them to both), since
// applying keeps the newest version of every record whatever the order.
func (s *Store) ExportPage(ctx context.Context, shard string, after []byte, limit int) (muts []Mutation, next []byte, done bool, err error) {
	if limit < 1 || limit > s.opts.Limits.MaxBatchMutations {
		return nil, nil, false, fmt.Errorf("%w: limit %d, must be in [1, %d]", ErrOutOfRange, limit, s.opts.Limits.MaxBatchMutations)
	}
	if shard == "" {
		return nil, nil, false, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	num, it, closeIt, err := s.beginScan(shard)
	if err != nil {
		return nil, nil, false, err
	}
	defer closeIt()
	prefix := appendShard(nil, num)
	seek := append(append([]byte(nil), prefix...), after...)
	if after != nil {
		seek = append(seek, 0) // strictly after
	}
	size := 0
	for it.SeekGE(seek); it.Valid(); it.Next() {
		k := it.Key()
		if !bytes.HasPrefix(k, prefix) {
			break
		}
		space := k[shardPrefixLen]
		if space != spaceContent && space != spaceIndex {
			continue
		}
		if len(muts) == limit || size >= s.opts.Limits.MaxBatchBytes/2 {
			return muts, next, false, nil
		}
		d, err := decodeKey(k)
		if err != nil {
			return nil, nil, false, err
		}
		rec, err := decodeRecord(it.Value())
		if err != nil {
			return nil, nil, false, err
		}
		m := Mutation{Shard: shard, Table: d.table, Version: rec.version}
		switch {
		case space == spaceContent && rec.tombstone:
			m.Op, m.Key = OpDelete, bytes.Clone(d.key)
		case space == spaceContent:
			m.Op, m.Key, m.Value = OpPut, bytes.Clone(d.key), bytes.Clone(rec.value)
		case rec.tombstone:
			m.Op, m.Owner, m.ID = OpRemove, d.owner, d.id
		default:
			m.Op, m.Owner, m.ID, m.Payload = OpAppend, d.owner, d.id, bytes.Clone(rec.value)
		}
		muts = append(muts, m)
		size += m.size()
		next = bytes.Clone(k[shardPrefixLen:])
		if len(muts)%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, false, err
			}
		}
	}
	return muts, next, true, it.Error()
}
