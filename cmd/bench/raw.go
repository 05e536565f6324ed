package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/aviarydb/aviary/shard"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// rawDB is a bare Pebble database for the baselines, in its own directory
// next to the node's data, so on the same disk.
type rawDB struct {
	dir string
	db  *pebble.DB
}

// openRaw opens a fresh Pebble database in dir. It uses the newest format,
// like the node's store, and the store's default block cache and memtable
// sizes, so the ratio node/raw measures what the node adds (gRPC, versions,
// journal, key locks), not different tuning.
func openRaw(dir string) (*rawDB, error) {
	var so shard.Options
	so.EnsureDefaults()
	cache := pebble.NewCache(so.CacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:              cache,
		MemTableSize:       so.MemTableBytes,
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             quietLogger{},
	}
	for i := range opts.Levels { // as the store configures it
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	opts.EnsureDefaults()
	db, err := pebble.Open(dir, opts)
	if err != nil {
		return nil, fmt.Errorf("raw pebble: open %s: %w", dir, err)
	}
	return &rawDB{dir: dir, db: db}, nil
}

// close closes the database and deletes its directory.
func (r *rawDB) close() error {
	return errors.Join(r.db.Close(), os.RemoveAll(r.dir))
}

// quietLogger drops Pebble's informational logs and prints its errors.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any) {}

func (quietLogger) Errorf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "raw pebble: "+format+"\n", args...)
}

func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf("raw pebble: "+format, args...))
}

// rawPut: one synced db.Set of a new random key per operation. Concurrent
// synced writes share fsyncs through Pebble's group commit, as the node's
// do.
func (b *bench) rawPut(_ context.Context, r *rawDB) (func(int) opFunc, error) {
	return func(int) opFunc {
		rng := newRand()
		key, val := make([]byte, 0, keyLen), make([]byte, b.cfg.ValueBytes)
		return func(context.Context) error {
			key = appendKey(key[:0], prefixPut, rng.Uint64())
			fillRandom(rng, val)
			return r.db.Set(key, val, pebble.Sync)
		}
	}, nil
}

// rawBatch100: one batch of batchMutations Sets of new random keys,
// committed with pebble.Sync.
func (b *bench) rawBatch100(_ context.Context, r *rawDB) (func(int) opFunc, error) {
	return func(int) opFunc {
		rng := newRand()
		key, val := make([]byte, 0, keyLen), make([]byte, b.cfg.ValueBytes)
		return func(context.Context) error {
			bt := r.db.NewBatch()
			defer bt.Close()
			for range batchMutations {
				key = appendKey(key[:0], prefixBatch, rng.Uint64())
				fillRandom(rng, val)
				if err := bt.Set(key, val, nil); err != nil {
					return err
				}
			}
			return bt.Commit(pebble.Sync)
		}
	}, nil
}

// rawGet bulk-loads the same keys as the node's get workload with unsynced
// batches and flushes them, then reads uniformly random ones with db.Get.
func (b *bench) rawGet(ctx context.Context, r *rawDB) (func(int) opFunc, error) {
	vb := b.cfg.ValueBytes
	fill := func(_ context.Context, _, lo, hi int) error {
		rng := newRand()
		bt := r.db.NewBatch()
		defer bt.Close()
		key, val := make([]byte, 0, keyLen), make([]byte, vb)
		for i := lo; i < hi; i++ {
			key = appendKey(key[:0], prefixGet, uint64(i))
			fillRandom(rng, val)
			if err := bt.Set(key, val, nil); err != nil {
				return err
			}
		}
		return bt.Commit(pebble.NoSync)
	}
	if err := b.preload(ctx, "get (raw)", b.cfg.Keys, preloadBatch, b.cfg.Concurrency, fill); err != nil {
		return nil, err
	}
	if err := r.db.Flush(); err != nil {
		return nil, fmt.Errorf("get (raw): flush: %w", err)
	}
	return func(int) opFunc {
		rng := newRand()
		key := make([]byte, 0, keyLen)
		return func(context.Context) error {
			key = appendKey(key[:0], prefixGet, rng.Uint64N(uint64(b.cfg.Keys)))
			v, closer, err := r.db.Get(key)
			if err != nil {
				return fmt.Errorf("get %s: %w", key, err)
			}
			n := len(v)
			_ = closer.Close()
			if n != vb {
				return fmt.Errorf("get: value of %d bytes, want %d", n, vb)
			}
			return nil
		}
	}, nil
}
