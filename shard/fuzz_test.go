package shard

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aviarydb/aviary/ids"
	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/vfs"
)

// Native fuzz targets for what the store reads back from Pebble: key
// encodings (FuzzKeyEncodings, FuzzFormatKey, FuzzSplitSpan), exported
// records (FuzzExportMutation), data records and metadata as a damaged
// store would hold them (FuzzStoredRecord, FuzzStoredMeta). keys_test.go
// holds FuzzDecodeKey, FuzzContentKeyRoundTrip and FuzzDecodeRecord.

// FuzzKeyEncodings encodes two index positions (and the count, month and
// retention keys of the same table) and checks that each key decodes to
// what was encoded, that prefixes are prefixes, that keys of one table lie
// in that table's spans only, and that byte order is the documented order:
// months newest first, then owner ascending, then id newest first.
func FuzzKeyEncodings(f *testing.F) {
	may := uint32(2026*12 + 4)
	f.Add(uint32(1), "timeline", may, uint64(42), uint64(1)<<50, "timeline", may, uint64(42), uint64(1)<<50+1)
	f.Add(uint32(7), "t", may, uint64(1), uint64(9), "u", may+1, uint64(0), uint64(0))
	f.Add(uint32(0xfffffffe), "x.y-z_0", uint32(0), ^uint64(0), uint64(0), "x.y-z_0", ^uint32(0), uint64(0), ^uint64(0))
	f.Add(uint32(3), "", may, uint64(5), uint64(5), "a", may, uint64(5), uint64(5))
	f.Add(uint32(2), "tl", may, uint64(1)<<63, uint64(1), "tl", may-1, uint64(1)<<63-1, uint64(2))
	f.Fuzz(func(t *testing.T, num uint32, table string, month uint32, owner, id uint64, table2 string, month2 uint32, owner2, id2 uint64) {
		if len(table) > 255 || len(table2) > 255 {
			t.Skip("table name longer than its length byte")
		}
		keys := []struct {
			k    []byte
			want decodedKey
		}{
			{indexKey(num, table, month, owner, id), decodedKey{shard: num, space: spaceIndex, table: table, month: month, owner: owner, id: id}},
			{countKey(num, table, month, owner), decodedKey{shard: num, space: spaceCount, table: table, month: month, owner: owner}},
			{monthKey(num, table, month), decodedKey{shard: num, space: spaceMonth, table: table, month: month}},
			{retentionKey(num, table), decodedKey{shard: num, space: spaceRetention, table: table}},
		}
		for _, c := range keys {
			d, err := decodeKey(c.k)
			if err != nil {
				t.Fatalf("decodeKey(%x): %v", c.k, err)
			}
			if d.key != nil || d.shard != c.want.shard || d.space != c.want.space || d.table != c.want.table ||
				d.month != c.want.month || d.owner != c.want.owner || d.id != c.want.id {
				t.Fatalf("decodeKey(%x) = %+v, want %+v", c.k, d, c.want)
			}
			if num < math.MaxUint32 {
				lo, hi := shardSpan(num)
				if bytes.Compare(c.k, lo) < 0 || bytes.Compare(c.k, hi) >= 0 {
					t.Fatalf("key %x of shard %d is outside its span [%x, %x)", c.k, num, lo, hi)
				}
			}
		}
		ik := keys[0].k
		if op := indexOwnerPrefix(num, table, month, owner); !bytes.HasPrefix(ik, op) ||
			!bytes.HasPrefix(op, indexMonthPrefix(num, table, month)) {
			t.Fatalf("index key %x does not start with its owner and month prefixes", ik)
		}
		if !bytes.HasPrefix(keys[1].k, countMonthPrefix(num, table, month)) {
			t.Fatalf("count key %x does not start with its month prefix", keys[1].k)
		}
		for _, sp := range []struct {
			span  func(string) ([]byte, []byte)
			space byte
		}{{IndexSpan, spaceIndex}, {ContentSpan, spaceContent}} {
			lo, hi := sp.span(table2)
			rel := ik[shardPrefixLen:]
			if sp.space == spaceContent {
				rel = contentKey(num, table, []byte{byte(owner)})[shardPrefixLen:]
			}
			in := bytes.Compare(rel, lo) >= 0 && (hi == nil || bytes.Compare(rel, hi) < 0)
			if in != (table == table2) {
				t.Fatalf("key %x of table %q: in the span [%x, %x) of table %q is %v", rel, table, lo, hi, table2, in)
			}
		}
		if table != table2 {
			return
		}
		// Order: month newest first, owner ascending, id newest first.
		want := cmp.Or(cmp.Compare(month2, month), cmp.Compare(owner, owner2), cmp.Compare(id2, id))
		if got := bytes.Compare(ik, indexKey(num, table, month2, owner2, id2)); got != want {
			t.Fatalf("index keys (%d %d %d) and (%d %d %d) compare %d, want %d", month, owner, id, month2, owner2, id2, got, want)
		}
		want = cmp.Or(cmp.Compare(month2, month), cmp.Compare(owner, owner2))
		if got := bytes.Compare(keys[1].k, countKey(num, table, month2, owner2)); got != want {
			t.Fatalf("count keys (%d %d) and (%d %d) compare %d, want %d", month, owner, month2, owner2, got, want)
		}
		if got, want := bytes.Compare(keys[2].k, monthKey(num, table, month2)), cmp.Compare(month2, month); got != want {
			t.Fatalf("month keys %d and %d compare %d, want %d", month, month2, got, want)
		}
	})
}

// FuzzFormatKey renders arbitrary shard-relative keys. FormatKey must never
// panic; it shows a key in hex exactly when it cannot decode it, and
// otherwise names the key's space and table.
func FuzzFormatKey(f *testing.F) {
	rel := func(k []byte) []byte { return k[shardPrefixLen:] }
	may := uint32(2026*12 + 4)
	f.Add(rel(contentKey(3, "posts", []byte("a\x00\xff"))))
	f.Add(rel(indexKey(3, "timeline", may, 42, 1<<50)))
	f.Add(rel(indexOwnerPrefix(3, "timeline", may, 42)))
	f.Add(rel(indexMonthPrefix(3, "timeline", may)))
	f.Add(rel(countKey(3, "timeline", may, 42)))
	f.Add(rel(monthKey(3, "timeline", ^uint32(0))))
	f.Add(rel(retentionKey(3, "timeline")))
	f.Add([]byte("c\x05pos"))
	f.Add([]byte("c\x02a\xffk"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, k []byte) {
		in := slices.Clone(k)
		got := FormatKey(k)
		if !bytes.Equal(in, k) {
			t.Fatalf("FormatKey modified its input")
		}
		if len(k) == 0 {
			if got != `""` {
				t.Fatalf("FormatKey(empty) = %s", got)
			}
			return
		}
		hexed := "hex:" + hex.EncodeToString(k)
		d, err := decodeKey(append(appendShard(nil, 1), k...))
		// Index span bounds (prefixes of an index key) are shown too.
		prefix := err != nil && len(k) >= 2 && k[0] == spaceIndex && len(k) >= 2+int(k[1])
		if prefix {
			n := len(k) - 2 - int(k[1])
			prefix = n == 0 || n == 4 || n == 12
		}
		if err == nil && validName("table", d.table) == nil || prefix && validName("table", string(k[2:2+int(k[1])])) == nil {
			word := map[byte]string{spaceContent: "content", spaceIndex: "index", spaceCount: "count", spaceMonth: "month", spaceRetention: "retention"}[k[0]]
			table := string(k[2 : 2+int(k[1])])
			if !strings.HasPrefix(got, word+" "+table) {
				t.Fatalf("FormatKey(%x) = %s, want it to start with %q", k, got, word+" "+table)
			}
			return
		}
		if got != hexed {
			t.Fatalf("FormatKey(%x) = %s, want %s", k, got, hexed)
		}
	})
}

// FuzzSplitSpan splits arbitrary spans (as an anti-entropy request names
// them) and checks the parts: at most n, contiguous, non-empty, covering the
// span exactly; a part splits again the same way.
func FuzzSplitSpan(f *testing.F) {
	cs, ce := ContentSpan("posts")
	is, ie := IndexSpan("timeline")
	f.Add(cs, ce, false, 16, uint8(3))
	f.Add(is, ie, false, 300, uint8(7))
	f.Add([]byte{}, []byte{}, true, 4, uint8(2))
	f.Add([]byte{0x80}, []byte{}, true, 2, uint8(0))
	f.Add([]byte("c\x05posts\xff\xff\xff\xff\xff\xff\xff"), []byte("c\x05posts\xff\xff\xff\xff\xff\xff\xff\xff\x01"), false, 255, uint8(9))
	f.Add(ce, cs, false, 4, uint8(1))
	f.Add([]byte{0, 0, 0}, []byte{0, 0, 0, 0}, false, 65537, uint8(200))
	f.Fuzz(func(t *testing.T, start, end []byte, unbounded bool, n int, m uint8) {
		if unbounded {
			end = nil
		}
		// Keep runs fast: at most a few thousand parts.
		if n > 4096 {
			n = 4096 + n%4096
		}
		parts := SplitSpan(start, end, n)
		checkSplit(t, start, end, n, parts)
		p := parts[int(m)%len(parts)]
		checkSplit(t, p[0], p[1], int(m), SplitSpan(p[0], p[1], int(m)))
	})
}

// FuzzExportMutation converts an arbitrary (key, value) record of shard 7,
// as an export reads it from Pebble, into the mutation that rebuilds it. It
// must fail exactly when the key or the record does not decode; a mutation
// it returns must re-encode to the very key and record it came from, and
// count the bytes the export's size counts.
func FuzzExportMutation(f *testing.F) {
	const num = 7
	may := uint32(2026*12 + 4)
	id := uint64(ids.NewID(time.Date(2026, 5, 3, 0, 0, 0, 0, time.UTC), 1, 1, 9))
	v := Version{HLC: ids.MakeTimestamp(1_780_000_000_000, 2), Site: 3}
	rel := func(k []byte) []byte { return k[shardPrefixLen:] }
	f.Add(rel(contentKey(num, "posts", []byte("k"))), encodeRecord(v, false, []byte("value")))
	f.Add(rel(contentKey(num, "posts", []byte("k"))), encodeRecord(v, true, nil))
	f.Add(rel(indexKey(num, "timeline", may, 42, id)), encodeRecord(v, false, []byte{1, 2, 3, 4}))
	f.Add(rel(indexKey(num, "timeline", may, 42, id)), encodeRecord(v, true, nil))
	f.Add(rel(indexKey(num, "timeline", may-1, 42, id)), encodeRecord(v, false, nil))
	f.Add(rel(countKey(num, "timeline", may, 42)), []byte{0, 0, 0, 0, 0, 0, 0, 1})
	f.Add([]byte("d\x01x"), encodeRecord(v, false, nil))
	f.Add(rel(contentKey(num, "posts", []byte("k"))), []byte{0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 3, 2})
	f.Fuzz(func(t *testing.T, rel, val []byte) {
		k := append(appendShard(nil, num), rel...)
		m, err := exportMutation("s", k, nil, val)
		d, kerr := decodeKey(k)
		rec, rerr := decodeRecord(val)
		if (err != nil) != (kerr != nil || rerr != nil) {
			t.Fatalf("exportMutation(%x, %x): %v; decodeKey: %v; decodeRecord: %v", k, val, err, kerr, rerr)
		}
		if err != nil {
			return
		}
		if m2, err := exportMutation("s", k, &d, val); err != nil || !mutationsEqual(m, m2) {
			t.Fatalf("with the key decoded beforehand: %+v, %v; without: %+v", m2, err, m)
		}
		if m.Shard != "s" || m.Table != d.table || m.Version != rec.version {
			t.Fatalf("exportMutation(%x, %x) = %+v", k, val, m)
		}
		var key, enc []byte
		switch m.Op {
		case OpPut:
			key, enc = contentKey(num, m.Table, m.Key), encodeRecord(m.Version, false, m.Value)
		case OpDelete:
			key, enc = contentKey(num, m.Table, m.Key), encodeRecord(m.Version, true, nil)
		case OpAppend:
			key, enc = indexKey(num, m.Table, d.month, m.Owner, m.ID), encodeRecord(m.Version, false, m.Payload)
		case OpRemove:
			key, enc = indexKey(num, m.Table, d.month, m.Owner, m.ID), encodeRecord(m.Version, true, nil)
		default:
			t.Fatalf("exportMutation(%x, %x): op %v", k, val, m.Op)
		}
		if d.space != spaceContent && d.space != spaceIndex {
			// Exports read the content and index spaces only
			// (dataBounds); other spaces have no mutation.
			return
		}
		if (m.Op == OpPut || m.Op == OpDelete) != (d.space == spaceContent) {
			t.Fatalf("%s key exported as %v", string(d.space), m.Op)
		}
		if rec.tombstone && len(rec.value) > 0 {
			// Writes never store bytes after a tombstone's header; an
			// export drops them.
			val = val[:recordHeaderLen]
		}
		if !bytes.Equal(key, k) || !bytes.Equal(enc, val) {
			t.Fatalf("exportMutation(%x, %x) = %+v, which re-encodes as (%x, %x)", k, val, m, key, enc)
		}
		if got, want := m.StoredBytes(), len(rel)+len(val); got != want {
			t.Fatalf("StoredBytes of %+v = %d, the record holds %d", m, got, want)
		}
	})
}

func mutationsEqual(a, b Mutation) bool {
	return a.Op == b.Op && a.Shard == b.Shard && a.Table == b.Table && bytes.Equal(a.Key, b.Key) &&
		bytes.Equal(a.Value, b.Value) && a.Owner == b.Owner && a.ID == b.ID && bytes.Equal(a.Payload, b.Payload) &&
		a.Version == b.Version
}

// fuzzStoreSeed fills a test store with a few well-formed records, so that
// a damaged record sits among good ones.
func fuzzStoreSeed(t testing.TB, s *Store) {
	t.Helper()
	mustApply(t, s,
		putM(shA, "k1", "v1", ver(5000, 0, 1)),
		delM(shA, "k2", ver(4000, 0, 1)),
		appM(shA, 42, idIn(time.May, 3, 1, 1), "p1", ver(3000, 0, 1)),
		appM(shA, 42, idIn(time.April, 3, 1, 1), "p2", ver(3000, 1, 1)),
		remM(shA, 42, idIn(time.May, 4, 1, 1), ver(2000, 0, 2)),
		appM(shA, 43, idIn(time.May, 5, 1, 1), "", ver(1000, 0, 2)),
	)
}

// FuzzStoredRecord writes one arbitrary record (a shard-relative key and a
// value) into shard s1 of a store holding good records, as a damaged or
// foreign store could hold it, and runs every read, scan and maintenance
// path over it. None may panic: a record they cannot decode is an error.
// A well-formed content record reads back as written, and an export fails
// exactly on a record that cannot be exported.
func FuzzStoredRecord(f *testing.F) {
	v := ver(100, 0, 3)
	rel := func(k []byte) []byte { return k[shardPrefixLen:] }
	may := month2026(time.May)
	id := idIn(time.May, 3, 1, 1)
	f.Add(rel(contentKey(1, tContent, []byte("k1"))), encodeRecord(v, false, []byte("new")))
	f.Add(rel(contentKey(1, tContent, []byte("k3"))), encodeRecord(v, true, nil))
	f.Add(rel(contentKey(1, tContent, []byte("k1"))), []byte{1, 2, 3})
	f.Add(rel(indexKey(1, tIndex, may, 42, id)), encodeRecord(v, false, []byte("p")))
	ik, mk := rel(indexKey(1, tIndex, may, 42, id)), rel(monthKey(1, tIndex, may))
	f.Add(ik[:len(ik)-3], encodeRecord(v, false, nil)) // an index key cut short
	f.Add(rel(indexKey(1, tIndex, may, 42, id)), make([]byte, 13+300))
	f.Add(rel(countKey(1, tIndex, may, 42)), []byte{1})
	f.Add(rel(countKey(1, tIndex, may, 42)), []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	f.Add(mk[:len(mk)-1], []byte{}) // a month marker cut short
	f.Add(rel(retentionKey(1, tIndex)), []byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("e\x03idx"), encodeRecord(v, true, nil))
	f.Fuzz(func(t *testing.T, rel, val []byte) {
		ctx := context.Background()
		s := newTestStore(t, nil)
		fuzzStoreSeed(t, s)
		num := s.mu.shards[shA].Num
		k := append(appendShard(nil, num), rel...)
		if err := s.db.Set(k, val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		d, kerr := decodeKey(k)
		rec, rerr := decodeRecord(val)

		// Reads.
		if kerr == nil && d.space == spaceContent && d.table == tContent && checkBytes("key", d.key, 1, s.opts.Limits.MaxKeyBytes) == nil {
			got, err := s.Get(ctx, shA, tContent, d.key)
			switch {
			case rerr != nil:
				if err == nil {
					t.Fatalf("Get of a corrupt record (%v) = %+v", rerr, got)
				}
			case rec.tombstone:
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Get of a tombstone: %+v, %v", got, err)
				}
			case err != nil || got.Version != rec.version || !bytes.Equal(got.Value, rec.value):
				t.Fatalf("Get = %+v, %v; the record is %+v", got, err, rec)
			}
		}
		_, _ = s.MultiGet(ctx, shA, tContent, [][]byte{[]byte("k1"), []byte("k2"), []byte("k3")})
		owners := []uint64{42, 43}
		if kerr == nil && d.owner != 0 {
			owners = append(owners, d.owner)
		}
		for _, o := range owners {
			_, _ = s.Range(ctx, shA, tIndex, o, RangeOptions{})
			_, _ = s.Range(ctx, shA, tIndex, o, RangeOptions{Offset: 1, Limit: 1})
			_, _ = s.Range(ctx, shA, tIndex, o, RangeOptions{MaxID: id, SinceID: 1})
			_, _, _ = s.Count(ctx, shA, tIndex, o)
		}
		_, _ = s.RetentionFloor(shA, tIndex)
		_, _ = s.ShardSize(shA)
		_, _ = s.Digest(ctx, shA, nil, nil)
		_, _ = s.DigestData(ctx, shA, nil, nil, func(string, bool, []byte, uint64) bool { return true })

		// Exports: a record in the exported spaces that cannot become a
		// mutation fails the export; any other record does not.
		_, exportErr := exportMutation(shA, k, nil, val)
		exported := len(rel) > 0 && rel[0] >= spaceContent && rel[0] <= spaceIndex
		var pageErr error
		for after := []byte(nil); ; {
			_, next, done, err := s.ExportPage(ctx, shA, after, 2)
			if err != nil || done {
				pageErr = err
				break
			}
			after = next
		}
		if (pageErr != nil) != (exported && exportErr != nil) {
			t.Fatalf("ExportPage: %v; the record (%x, %x) exports with error %v", pageErr, k, val, exportErr)
		}
		e, err := s.NewExport(shA, ExportOptions{Filter: func(string, bool, []byte, uint64) bool { return true }})
		if err != nil {
			t.Fatal(err)
		}
		_, _, _ = e.Size(ctx)
		_, _, _, _ = e.Next(ctx, nil, 10, 1<<20)
		_ = e.Close()

		// Writes over the record, and maintenance.
		if kerr == nil && d.space == spaceContent && d.table == tContent {
			_, _ = s.Apply(ctx, []Mutation{putM(shA, string(d.key), "x", ver(50, 0, 1))})
		}
		if kerr == nil && d.space == spaceIndex && d.table == tIndex && d.owner != 0 {
			_, _ = s.Apply(ctx, []Mutation{remM(shA, d.owner, d.id, ver(50, 0, 1))})
			_, _ = s.Apply(ctx, []Mutation{appM(shA, d.owner, id, "y", ver(40, 0, 1))})
		}
		_, _ = s.CollectTombstones(ctx, ids.MakeTimestamp(testNow.UnixMilli(), 0))
		_, _ = s.PurgeMatching(ctx, shA, func(_ string, index bool, _ []byte, owner uint64) bool { return index && owner == 43 })
		_ = s.DropMonthsBefore(ctx, shA, tIndex, may)
		_, _, _, _ = s.ExportPage(ctx, shA, nil, 100)
	})
}

// FuzzStoredMeta writes one arbitrary metadata record (shard 0: shard and
// table records, the shard counter, journal entries, jobs, outbox markers,
// the journal floor, import states) into a store with a journal, reopens
// it, and uses the journal. Open either fails with an error or yields a
// store whose journal, jobs and outbox can be read and advanced; a new
// journal entry never reuses a sequence number in use.
func FuzzStoredMeta(f *testing.F) {
	seq8 := func(_ byte, seq uint64, tail string) []byte {
		return append(binary.BigEndian.AppendUint64(nil, seq), tail...)
	}
	f.Add(byte(metaJob), seq8(metaJob, 1, "n3/s3"), []byte(`{"attempts":2,"last_error":"x","failed":"2026-01-02T03:04:05Z"}`))
	f.Add(byte(metaErrorJob), seq8(metaErrorJob, 9, "n1/s1"), []byte(`{}`))
	f.Add(byte(metaJob), seq8(metaJob, 1, "n1/s1"), []byte(`{"attempts":"x"}`))
	f.Add(byte(metaJob), []byte{0, 0, 1}, []byte(`{}`))
	f.Add(byte(metaJournal), []byte{0xff, 0xff, 0xff}, []byte("entry"))
	f.Add(byte(metaJournal), seq8(metaJournal, 1<<40, ""), []byte("entry"))
	f.Add(byte(metaOutbox), seq8(metaOutbox, 77, ""), []byte(nil))
	f.Add(byte(metaOutbox), []byte{1}, []byte(nil))
	f.Add(byte(metaJournalFloor), []byte{}, []byte{0, 0, 0, 0, 0, 0, 1, 0})
	f.Add(byte(metaJournalFloor), []byte{}, []byte{1})
	f.Add(byte(metaShard), []byte("s9"), []byte{0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(byte(metaShard), []byte("s1"), []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Add(byte(metaTable), []byte("t2"), []byte{byte(KindIndex)})
	f.Add(byte('N'), []byte{}, []byte{0xff, 0xff, 0xff, 0xff})
	f.Add(byte(metaImport), []byte("copy/x"), []byte(`{"after":"AA=="}`))
	f.Fuzz(func(t *testing.T, kind byte, name, val []byte) {
		ctx := context.Background()
		opts := testOptions()
		opts.FS = vfs.NewMem()
		s, err := Open("db", opts)
		if err != nil {
			t.Fatal(err)
		}
		setupSchema(t, s)
		if _, err := s.JournalAppend(ctx, []byte("e1"), []string{"n1/s1", "n2/s2"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := s.ApplyLogged(ctx, nil, []byte("e2"), []string{"n2/s2"}, LogOptions{Outbox: true}); err != nil {
			t.Fatal(err)
		}
		if err := s.JobFailed(Job{Seq: 1, Target: "n2/s2", Attempts: 3, LastError: "down"}, true); err != nil {
			t.Fatal(err)
		}
		if err := s.db.Set(append(metaKey(kind, ""), name...), val, pebble.Sync); err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s, err = Open("db", opts)
		if err != nil {
			return // a damaged store is refused, with an error
		}
		defer s.Close()
		_ = s.Shards()
		_ = s.Tables()
		seqs := map[uint64]bool{}
		for _, errorQueue := range []bool{false, true} {
			jobs, err := s.Jobs(errorQueue, 0, "", 100)
			if err != nil {
				continue
			}
			if n, err := s.CountJobs(errorQueue, 100); err != nil || n < len(jobs) {
				t.Fatalf("CountJobs = %d, %v; Jobs listed %d", n, err, len(jobs))
			}
			for _, j := range jobs {
				// A job without its entry (which only damage leaves)
				// holds no sequence number.
				if _, err := s.JournalEntry(j.Seq); err == nil {
					seqs[j.Seq] = true
				}
			}
			if len(jobs) > 0 {
				_, _ = s.Jobs(errorQueue, jobs[0].Seq, jobs[0].Target, 100)
			}
		}
		entries, _ := s.OutboxEntries(0, 100)
		for _, e := range entries {
			seqs[e.Seq] = true
		}
		_, _, _, _ = s.OutboxStats()
		_, _, _ = s.ImportState("copy/x")
		seq, err := s.JournalAppend(ctx, []byte("e3"), []string{"n1/s1"})
		if err == nil {
			for old := range seqs {
				if seq <= old {
					t.Fatalf("new journal entry got seq %d; seq %d is in use", seq, old)
				}
			}
		}
		for _, errorQueue := range []bool{false, true} {
			jobs, _ := s.Jobs(errorQueue, 0, "", 100)
			for _, j := range jobs {
				if errorQueue {
					_ = s.RetryErrorJob(j.Seq, j.Target)
				} else {
					_ = s.JobFailed(j, false)
					_ = s.JobDone(j.Seq, j.Target)
				}
			}
		}
		_, _ = s.TrimOutbox(math.MaxUint64)
		_, _ = s.OutboxEntries(0, 100)
	})
}
