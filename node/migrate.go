package node

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/internal/timex"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The node side of online migrations: a source exports a shard from one
// snapshot; a destination pulls it page by page and applies each page last
// writer wins, in one batch with its cursor, so a copy interrupted by any
// crash resumes after the last page it kept.

// Export page bounds.
const (
	defaultPageRecords = 1000
	defaultPageBytes   = 1 << 20
	maxPageBytes       = 4 << 20
)

// hashFilter selects the records of ranges by their routing hash; nil
// ranges select everything.
func hashFilter(ranges []*pb.HashRange) (shard.KeyFilter, error) {
	if len(ranges) == 0 {
		return nil, nil
	}
	byTable := map[string][]*pb.HashRange{}
	for i, r := range ranges {
		if err := gizzard.ValidName(r.Table); err != nil {
			return nil, fmt.Errorf("ranges[%d].table: %w", i, err)
		}
		if r.Hi != 0 && r.Hi <= r.Lo {
			return nil, fmt.Errorf("ranges[%d]: hi %#x is not above lo %#x (hi 0 means up to 2^64)", i, r.Hi, r.Lo)
		}
		byTable[r.Table] = append(byTable[r.Table], r)
	}
	return func(table string, index bool, key []byte, owner uint64) bool {
		rs := byTable[table]
		if len(rs) == 0 {
			return false
		}
		var h uint64
		if index {
			h = gizzard.OwnerHash(owner)
		} else {
			h = gizzard.Hash(key)
		}
		for _, r := range rs {
			if h >= r.Lo && (r.Hi == 0 || h < r.Hi) {
				return true
			}
		}
		return false
	}, nil
}

func (a *adminServer) ExportShard(r *pb.ExportShardRequest, stream pb.ShardAdmin_ExportShardServer) error {
	ctx := stream.Context()
	if r.MinMapVersion > 0 {
		if have := a.n.fence.installed(); have < r.MinMapVersion {
			return status.Errorf(codes.Unavailable, "this node applied map version %d, the export needs %d: retry once it catches up", have, r.MinMapVersion)
		}
	}
	filter, err := hashFilter(r.Ranges)
	if err != nil {
		return invalidf("%v", err)
	}
	pageRecords, pageBytes := int(r.PageRecords), int(r.PageBytes)
	if pageRecords < 0 || pageBytes < 0 || pageBytes > maxPageBytes {
		return invalidf("page_records %d, page_bytes %d: must be non-negative, page_bytes at most %d", pageRecords, pageBytes, maxPageBytes)
	}
	if pageRecords == 0 {
		pageRecords = defaultPageRecords
	}
	if pageBytes == 0 {
		pageBytes = defaultPageBytes
	}
	exp, err := a.n.store.NewExport(r.Shard, shard.ExportOptions{Filter: filter, Start: nilIfEmpty(r.Start), End: nilIfEmpty(r.End)})
	if err != nil {
		return toStatus(err)
	}
	defer exp.Close()
	records, bytes, err := exp.Size(ctx)
	if err != nil {
		return toStatus(err)
	}
	after := nilIfEmpty(r.After)
	first := true
	for {
		muts, next, done, err := exp.Next(ctx, after, pageRecords, pageBytes)
		if err != nil {
			return toStatus(err)
		}
		resp := &pb.ExportShardResponse{Next: next, Done: done, Mutations: make([]*pb.Mutation, len(muts))}
		for i := range muts {
			resp.Mutations[i] = router.ToProto(&muts[i])
			resp.PageBytes += uint64(muts[i].StoredBytes())
		}
		if first {
			resp.TotalRecords, resp.TotalBytes = records, bytes
			first = false
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
		a.n.metrics.exported.Add(float64(len(muts)))
		a.n.metrics.exportedBytes.Add(float64(resp.PageBytes))
		if done {
			return nil
		}
		after = next
	}
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// copyState is a copy's durable cursor, kept with the data it covers.
type copyState struct {
	After   []byte `json:"after,omitempty"`
	Records uint64 `json:"records"`
	Bytes   uint64 `json:"bytes"`
	Done    bool   `json:"done,omitempty"`
}

func copyStateKey(id string) string { return "copy/" + id }

func (n *Node) copyState(id string) (copyState, error) {
	var st copyState
	b, ok, err := n.store.ImportState(copyStateKey(id))
	if err != nil || !ok {
		return st, err
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("copy state of %q: %w", id, err)
	}
	return st, nil
}

// copies guards against two runs of one copy at once on a node.
type copies struct {
	mu      sync.Mutex
	running map[string]bool
}

func (c *copies) start(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running[id] {
		return false
	}
	if c.running == nil {
		c.running = map[string]bool{}
	}
	c.running[id] = true
	return true
}

func (c *copies) stop(id string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.running, id)
}

func (a *adminServer) CopyState(ctx context.Context, r *pb.CopyStateRequest) (*pb.CopyProgress, error) {
	if err := gizzard.ValidName(r.MigrationId); err != nil {
		return nil, invalidf("migration_id: %v", err)
	}
	st, err := a.n.copyState(r.MigrationId)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CopyProgress{Records: st.Records, Bytes: st.Bytes, Done: st.Done}, nil
}

func (a *adminServer) CopyShard(r *pb.CopyShardRequest, stream pb.ShardAdmin_CopyShardServer) error {
	ctx := stream.Context()
	n := a.n
	if err := gizzard.ValidName(r.MigrationId); err != nil {
		return invalidf("migration_id: %v", err)
	}
	if r.SourceAddr == "" || r.SourceShard == "" || r.DestShard == "" {
		return invalidf("source_addr, source_shard and dest_shard are required")
	}
	if r.RateBytes < 0 || r.RateRecords < 0 {
		return invalidf("rate_bytes %v, rate_records %v: must not be negative", r.RateBytes, r.RateRecords)
	}
	if _, err := hashFilter(r.Ranges); err != nil {
		return invalidf("%v", err)
	}
	if !slices.ContainsFunc(n.store.Shards(), func(s shard.ShardInfo) bool { return s.Name == r.DestShard }) {
		return status.Errorf(codes.FailedPrecondition, "shard %q does not exist on this node (yet): the map creates it", r.DestShard)
	}
	if !n.copies.start(r.MigrationId) {
		return status.Errorf(codes.Aborted, "migration %q is already copying on this node (another driver?)", r.MigrationId)
	}
	defer n.copies.stop(r.MigrationId)
	n.metrics.copies.Inc()
	defer n.metrics.copies.Dec()

	st, err := n.copyState(r.MigrationId)
	if err != nil {
		return toStatus(err)
	}
	prog := &pb.CopyProgress{Records: st.Records, Bytes: st.Bytes, Resumed: st.Records > 0 || st.After != nil, ResumedRecords: st.Records}
	if st.Done {
		prog.Done = true
		return stream.Send(prog)
	}
	cc, err := n.remotes.conn(r.SourceAddr)
	if err != nil {
		return status.Errorf(codes.Unavailable, "source %s: %v", r.SourceAddr, err)
	}
	src, err := pb.NewShardAdminClient(cc).ExportShard(ctx, &pb.ExportShardRequest{
		Shard: r.SourceShard, After: st.After, Ranges: r.Ranges, MinMapVersion: r.MinMapVersion,
	})
	if err != nil {
		return err
	}
	key := copyStateKey(r.MigrationId)
	start := time.Now()
	var runRecords, runBytes uint64
	lastSent := time.Time{}
	n.log.Info("copy started", "migration", r.MigrationId, "source", r.SourceAddr+"/"+r.SourceShard, "dest", r.DestShard, "resume_records", st.Records)
	// Pages are received and decoded in one goroutine while the previous
	// one is imported here: the copy uses a core for each.
	pctx, cancelPages := context.WithCancel(ctx)
	defer cancelPages()
	pages := receivePages(pctx, src, r.SourceAddr, r.DestShard)
	for {
		var rp receivedPage
		select {
		case rp = <-pages:
		case <-ctx.Done():
			return ctx.Err()
		}
		if rp.err != nil {
			return rp.err
		}
		page, muts := rp.page, rp.muts
		if page.TotalRecords > 0 || page.TotalBytes > 0 {
			prog.TotalRecords, prog.TotalBytes = page.TotalRecords, page.TotalBytes
		}
		st.Records += uint64(len(muts))
		st.Bytes += page.PageBytes
		if len(page.Next) > 0 {
			st.After = page.Next
		}
		st.Done = page.Done
		enc, _ := json.Marshal(st)
		if _, err := n.store.ImportPage(ctx, muts, key, enc); err != nil {
			return toStatus(err)
		}
		runRecords += uint64(len(muts))
		runBytes += page.PageBytes
		n.metrics.copied.Add(float64(len(muts)))
		n.metrics.copiedBytes.Add(float64(page.PageBytes))
		prog.Records, prog.Bytes, prog.Done = st.Records, st.Bytes, st.Done
		if st.Done {
			if err := n.store.Sync(ctx); err != nil {
				return toStatus(err)
			}
			n.log.Info("copy done", "migration", r.MigrationId, "records", st.Records, "bytes", st.Bytes, "took", time.Since(start).Round(time.Millisecond))
			return stream.Send(prog)
		}
		if time.Since(lastSent) >= 100*time.Millisecond {
			if err := stream.Send(prog); err != nil {
				return err
			}
			lastSent = time.Now()
		}
		if err := pace(ctx, start, runRecords, runBytes, r.RateRecords, r.RateBytes); err != nil {
			return err
		}
	}
}

// pace waits until copying records and bytes since start keeps within the
// rates (0: unlimited).
func pace(ctx context.Context, start time.Time, records, bytes uint64, rateRecords, rateBytes float64) error {
	var due time.Duration
	if rateRecords > 0 {
		due = max(due, time.Duration(float64(records)/rateRecords*float64(time.Second)))
	}
	if rateBytes > 0 {
		due = max(due, time.Duration(float64(bytes)/rateBytes*float64(time.Second)))
	}
	if wait := time.Until(start.Add(due)); wait > 0 {
		return timex.Sleep(ctx, wait)
	}
	return nil
}

func (a *adminServer) DigestData(ctx context.Context, r *pb.DigestDataRequest) (*pb.DigestShardResponse, error) {
	filter, err := hashFilter(r.Ranges)
	if err != nil {
		return nil, invalidf("%v", err)
	}
	d, err := a.n.store.DigestData(ctx, r.Shard, nilIfEmpty(r.Start), nilIfEmpty(r.End), filter)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DigestShardResponse{Sum: d.Sum[:], SumHex: hex.EncodeToString(d.Sum[:]), Records: d.Records, Bytes: d.Bytes}, nil
}

func (a *adminServer) PurgeShard(ctx context.Context, r *pb.PurgeShardRequest) (*pb.PurgeShardResponse, error) {
	if len(r.Ranges) == 0 {
		return nil, invalidf("ranges: at least one hash range to purge")
	}
	filter, err := hashFilter(r.Ranges)
	if err != nil {
		return nil, invalidf("%v", err)
	}
	n, err := a.n.store.PurgeMatching(ctx, r.Shard, filter)
	if err != nil {
		return nil, toStatus(err)
	}
	a.n.log.Info("shard ranges purged", "shard", r.Shard, "records", n)
	return &pb.PurgeShardResponse{Records: n}, nil
}

// receivedPage is one page of an export, decoded for the destination shard,
// or the error that ended the export.
type receivedPage struct {
	page *pb.ExportShardResponse
	muts []shard.Mutation
	err  error
}

// receivePages receives and decodes the pages of an export in a goroutine
// of its own, a page ahead of their import; it ends after the last page, an
// error, or ctx.
func receivePages(ctx context.Context, src pb.ShardAdmin_ExportShardClient, sourceAddr, destShard string) <-chan receivedPage {
	out := make(chan receivedPage, 1)
	go func() {
		send := func(rp receivedPage) bool {
			select {
			case out <- rp:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for {
			page, err := src.Recv()
			if err == io.EOF {
				err = status.Errorf(codes.Unavailable, "source %s ended the export before its last page", sourceAddr)
			}
			if err != nil {
				send(receivedPage{err: err})
				return
			}
			muts := make([]shard.Mutation, len(page.Mutations))
			for i, p := range page.Mutations {
				if err := router.FromProto(p, &muts[i]); err != nil {
					send(receivedPage{err: status.Errorf(codes.DataLoss, "source %s sent a bad mutation: %v", sourceAddr, err)})
					return
				}
				muts[i].Shard = destShard
			}
			if !send(receivedPage{page: page, muts: muts}) || page.Done {
				return
			}
		}
	}()
	return out
}
