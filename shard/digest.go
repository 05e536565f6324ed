package shard

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
)

// Digest summarises a shard or a key range of it. Two copies of a shard hold
// the same records exactly when their digests are equal.
type Digest struct {
	// Sum is SHA-256 over every record in key order: each key (without the
	// node-local shard number) and value, both length-prefixed. Values carry
	// versions, so the sum covers keys and versions.
	Sum [sha256.Size]byte
	// Records is the number of records hashed.
	Records uint64
	// Bytes is the number of key and value bytes hashed.
	Bytes uint64
}

func (d Digest) String() string {
	return fmt.Sprintf("%x (%d records, %d bytes)", d.Sum[:8], d.Records, d.Bytes)
}

// Digest hashes the records of shard whose shard-relative keys k satisfy
// start <= k < end (nil start or end: unbounded), in key order, from one
// consistent view. Shard-relative keys begin with the space byte ('c'
// content, 'i' index entries, 'n' counts, 'r' retention floors); see the
// package comment. Month markers are derived and not hashed.
func (s *Store) Digest(ctx context.Context, shard string, start, end []byte) (Digest, error) {
	if shard == "" {
		return Digest{}, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	num, it, done, err := s.beginScan(shard)
	if err != nil {
		return Digest{}, err
	}
	defer done()
	prefix := appendShard(nil, num)
	lo := append(append([]byte(nil), prefix...), start...)
	h := sha256.New()
	var d Digest
	var lenBuf [binary.MaxVarintLen64]byte
	for it.SeekGE(lo); it.Valid(); it.Next() {
		k := it.Key()[shardPrefixLen:]
		if end != nil && string(k) >= string(end) {
			break
		}
		if k[0] == spaceMonth {
			continue
		}
		v := it.Value()
		h.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(k)))])
		h.Write(k)
		h.Write(lenBuf[:binary.PutUvarint(lenBuf[:], uint64(len(v)))])
		h.Write(v)
		d.Records++
		d.Bytes += uint64(len(k) + len(v))
		if d.Records%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return Digest{}, err
			}
		}
	}
	if err := it.Error(); err != nil {
		return Digest{}, err
	}
	h.Sum(d.Sum[:0])
	return d, nil
}
