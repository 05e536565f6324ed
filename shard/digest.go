package shard

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash"
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
// package comment. Month markers are derived and not hashed, nor are zero
// counts (kept rather than deleted; they mean what no count does).
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
	h := newDigester()
	for it.SeekGE(lo); it.Valid(); it.Next() {
		k := it.Key()[shardPrefixLen:]
		if end != nil && string(k) >= string(end) {
			break
		}
		if len(k) > 0 && (k[0] == spaceMonth || k[0] == spaceCount && zeroCount(it.Value())) {
			continue
		}
		h.add(k, it.Value())
		if h.d.Records%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return Digest{}, err
			}
		}
	}
	if err := it.Error(); err != nil {
		return Digest{}, err
	}
	return h.sum(), nil
}

// DigestData hashes, like Digest, the content records and index entries
// (tombstones included) of shard selected by filter (nil: all) whose
// shard-relative keys k satisfy start <= k < end (nil: unbounded), from one
// consistent view. Counts, month markers and retention floors are not
// hashed: they derive from the entries. Two copies of the selected part of
// a shard hold the same records exactly when their DigestData are equal,
// even when the rest of each shard differs (as while a split moves half of
// one shard to another).
func (s *Store) DigestData(ctx context.Context, shard string, start, end []byte, filter KeyFilter) (Digest, error) {
	if err := ctx.Err(); err != nil {
		return Digest{}, err
	}
	if shard == "" {
		return Digest{}, fmt.Errorf("%w: shard name is empty", ErrInvalid)
	}
	num, it, done, err := s.beginScan(shard)
	if err != nil {
		return Digest{}, err
	}
	defer done()
	h := newDigester()
	_, err = scanData(ctx, it, num, start, end, filter, func(k []byte, _ *decodedKey, v []byte) (bool, error) {
		h.add(k[shardPrefixLen:], v)
		return true, nil
	})
	if err != nil {
		return Digest{}, err
	}
	return h.sum(), nil
}

// digester accumulates a Digest.
type digester struct {
	h      hash.Hash
	d      Digest
	lenBuf [binary.MaxVarintLen64]byte
}

func newDigester() *digester { return &digester{h: sha256.New()} }

// add hashes a record: its shard-relative key k and its value v.
func (g *digester) add(k, v []byte) {
	g.h.Write(g.lenBuf[:binary.PutUvarint(g.lenBuf[:], uint64(len(k)))])
	g.h.Write(k)
	g.h.Write(g.lenBuf[:binary.PutUvarint(g.lenBuf[:], uint64(len(v)))])
	g.h.Write(v)
	g.d.Records++
	g.d.Bytes += uint64(len(k) + len(v))
}

func (g *digester) sum() Digest {
	d := g.d
	g.h.Sum(d.Sum[:0])
	return d
}

// zeroCount reports whether v is a count of zero.
func zeroCount(v []byte) bool {
	return len(v) == 8 && binary.BigEndian.Uint64(v) == 0
}
