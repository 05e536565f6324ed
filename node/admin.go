package node

import (
	"context"
	"encoding/hex"
	"slices"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// adminServer implements the ShardAdmin service on a Node.
type adminServer struct {
	pb.UnimplementedShardAdminServer
	n *Node
}

func (a *adminServer) shardInfo(sh shard.ShardInfo) *pb.ShardInfo {
	size, _ := a.n.store.ShardSize(sh.Name)
	return &pb.ShardInfo{
		Name:             sh.Name,
		CreatedUnixMs:    sh.Created.UnixMilli(),
		SizeBytes:        size,
		DefaultPlacement: slices.Contains(a.n.ns.Map().LeavesOnNode(a.n.cfg.NodeID), sh.Name),
	}
}

func (a *adminServer) CreateShard(ctx context.Context, r *pb.CreateShardRequest) (*pb.ShardInfo, error) {
	sh, err := a.n.store.CreateShard(ctx, r.Name)
	if err != nil {
		return nil, toStatus(err)
	}
	a.n.log.Info("shard created", "shard", sh.Name)
	return a.shardInfo(sh), nil
}

func (a *adminServer) DropShard(ctx context.Context, r *pb.DropShardRequest) (*pb.DropShardResponse, error) {
	if slices.Contains(a.n.ns.Map().LeavesOnNode(a.n.cfg.NodeID), r.Name) {
		return nil, status.Errorf(codes.FailedPrecondition, "shard %q is in the site's shard map on this node: remove it from the map first", r.Name)
	}
	// Remember the map version the shard was dropped at: a restarted node
	// replays older maps that still list it, and must not create it again.
	v := max(a.n.ns.Map().Version, a.n.routedMap().Version)
	if err := a.n.markDropped(ctx, r.Name, v); err != nil {
		return nil, toStatus(err)
	}
	if err := a.n.store.DropShard(ctx, r.Name); err != nil {
		return nil, toStatus(err)
	}
	a.n.log.Info("shard dropped", "shard", r.Name)
	return &pb.DropShardResponse{}, nil
}

func (a *adminServer) ListShards(ctx context.Context, _ *pb.ListShardsRequest) (*pb.ListShardsResponse, error) {
	var resp pb.ListShardsResponse
	for _, sh := range a.n.store.Shards() {
		resp.Shards = append(resp.Shards, a.shardInfo(sh))
	}
	return &resp, nil
}

func (a *adminServer) DigestShard(ctx context.Context, r *pb.DigestShardRequest) (*pb.DigestShardResponse, error) {
	var end []byte
	if len(r.End) > 0 {
		end = r.End
	}
	d, err := a.n.store.Digest(ctx, r.Name, r.Start, end)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.DigestShardResponse{Sum: d.Sum[:], SumHex: hex.EncodeToString(d.Sum[:]), Records: d.Records, Bytes: d.Bytes}, nil
}

func (a *adminServer) CreateTable(ctx context.Context, r *pb.CreateTableRequest) (*pb.TableInfo, error) {
	var kind shard.TableKind
	switch r.Kind {
	case pb.TableKind_TABLE_KIND_CONTENT:
		kind = shard.KindContent
	case pb.TableKind_TABLE_KIND_INDEX:
		kind = shard.KindIndex
	default:
		return nil, invalidf("kind is unset: TABLE_KIND_CONTENT or TABLE_KIND_INDEX is required")
	}
	if err := a.n.store.CreateTable(ctx, r.Name, kind); err != nil {
		return nil, toStatus(err)
	}
	a.n.log.Info("table created", "table", r.Name, "kind", kind)
	return &pb.TableInfo{Name: r.Name, Kind: r.Kind}, nil
}

func (a *adminServer) ListTables(ctx context.Context, _ *pb.ListTablesRequest) (*pb.ListTablesResponse, error) {
	var resp pb.ListTablesResponse
	for _, t := range a.n.store.Tables() {
		resp.Tables = append(resp.Tables, &pb.TableInfo{Name: t.Name, Kind: pb.TableKind(t.Kind)})
	}
	return &resp, nil
}

func (a *adminServer) DropMonths(ctx context.Context, r *pb.DropMonthsRequest) (*pb.DropMonthsResponse, error) {
	month, err := ids.ParseMonth(r.Before)
	if err != nil {
		return nil, invalidf("before: %v (want YYYY-MM)", err)
	}
	shards := []string{r.Shard}
	if r.Shard == "" {
		shards = shards[:0]
		for _, sh := range a.n.store.Shards() {
			shards = append(shards, sh.Name)
		}
	}
	for _, sh := range shards {
		if err := a.n.store.DropMonthsBefore(ctx, sh, r.Table, month); err != nil {
			return nil, toStatus(err)
		}
	}
	a.n.log.Info("months dropped", "table", r.Table, "before", r.Before, "shards", len(shards))
	return &pb.DropMonthsResponse{}, nil
}

func (a *adminServer) CollectTombstones(ctx context.Context, _ *pb.CollectTombstonesRequest) (*pb.CollectTombstonesResponse, error) {
	n, err := a.n.collectTombstones(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.CollectTombstonesResponse{Collected: uint64(n)}, nil
}

func (a *adminServer) ListJobs(ctx context.Context, r *pb.ListJobsRequest) (*pb.ListJobsResponse, error) {
	limit := int(r.Limit)
	if limit <= 0 {
		limit = 1000
	}
	resp := &pb.ListJobsResponse{JournalSeq: a.n.store.JournalSeq()}
	want := func(j shard.Job) bool {
		return (len(r.Targets) == 0 || slices.Contains(r.Targets, j.Target)) && (r.MaxSeq == 0 || j.Seq <= r.MaxSeq)
	}
	filtered := len(r.Targets) > 0 || r.MaxSeq > 0
	page := limit + 1
	if filtered {
		page = max(page, 1000)
	}
	var jobs []shard.Job
	var afterSeq uint64
	var afterTarget string
	for len(jobs) <= limit {
		got, err := a.n.store.Jobs(r.ErrorQueue, afterSeq, afterTarget, page)
		if err != nil {
			return nil, toStatus(err)
		}
		for _, j := range got {
			if r.MaxSeq > 0 && j.Seq > r.MaxSeq {
				got = nil // jobs come in sequence order: no more to find
				break
			}
			if want(j) {
				jobs = append(jobs, j)
			}
			afterSeq, afterTarget = j.Seq, j.Target
		}
		if len(got) < page || !filtered {
			break
		}
		if err := ctx.Err(); err != nil {
			return nil, toStatus(err)
		}
	}
	if len(jobs) > limit {
		jobs, resp.Truncated = jobs[:limit], true
	}
	for _, j := range jobs {
		pj := &pb.Job{Seq: j.Seq, Target: j.Target, Attempts: int32(j.Attempts), LastError: j.LastError}
		if !j.Failed.IsZero() {
			pj.FailedUnixMs = j.Failed.UnixMilli()
		}
		if !j.Next.IsZero() {
			pj.NextUnixMs = j.Next.UnixMilli()
		}
		resp.Jobs = append(resp.Jobs, pj)
	}
	return resp, nil
}

func (a *adminServer) RetryJob(ctx context.Context, r *pb.JobRef) (*pb.RetryJobResponse, error) {
	if err := a.n.store.RetryErrorJob(r.Seq, r.Target); err != nil {
		return nil, toStatus(err)
	}
	a.n.router.Retried(r.Seq)
	a.n.log.Info("error job retried", "seq", r.Seq, "target", r.Target)
	return &pb.RetryJobResponse{}, nil
}

func (a *adminServer) DropJob(ctx context.Context, r *pb.JobRef) (*pb.DropJobResponse, error) {
	if err := a.n.store.DropErrorJob(r.Seq, r.Target); err != nil {
		return nil, toStatus(err)
	}
	a.n.log.Warn("error job dropped", "seq", r.Seq, "target", r.Target)
	return &pb.DropJobResponse{}, nil
}

func (a *adminServer) ExportPage(ctx context.Context, r *pb.ExportPageRequest) (*pb.ExportPageResponse, error) {
	limit := int(r.Limit)
	if limit == 0 {
		limit = min(500, a.n.cfg.Limits.MaxBatchMutations)
	}
	var after []byte
	if len(r.After) > 0 {
		after = r.After
	}
	muts, next, done, err := a.n.store.ExportPage(ctx, r.Shard, after, limit)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.ExportPageResponse{Next: next, Done: done, Mutations: make([]*pb.Mutation, len(muts))}
	for i := range muts {
		resp.Mutations[i] = router.ToProto(&muts[i])
	}
	return resp, nil
}
