package node

import (
	"context"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// dataServer implements the Data service on a Node.
type dataServer struct {
	pb.UnimplementedDataServer
	n *Node
}

func (d *dataServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return d.one(ctx, &pb.Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &pb.Mutation_Put_{Put: &pb.Mutation_Put{Key: r.Key, Value: r.Value}}})
}

func (d *dataServer) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return d.one(ctx, &pb.Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &pb.Mutation_Delete_{Delete: &pb.Mutation_Delete{Key: r.Key}}})
}

func (d *dataServer) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return d.one(ctx, &pb.Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &pb.Mutation_Append_{Append: &pb.Mutation_Append{Owner: r.Owner, Id: r.Id, Payload: r.Payload}}})
}

func (d *dataServer) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return d.one(ctx, &pb.Mutation{Table: r.Table, Shard: r.Shard, Version: r.Version,
		Op: &pb.Mutation_Remove_{Remove: &pb.Mutation_Remove{Owner: r.Owner, Id: r.Id}}})
}

func (d *dataServer) one(ctx context.Context, m *pb.Mutation) (*pb.WriteResult, error) {
	res, err := d.n.write(ctx, []*pb.Mutation{m})
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

func (d *dataServer) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	if len(r.Mutations) == 0 {
		return nil, invalidf("mutations is empty")
	}
	res, err := d.n.write(ctx, r.Mutations)
	if err != nil {
		return nil, err
	}
	return &pb.WriteResponse{Results: res}, nil
}

// write converts, routes, stamps and applies mutations as one atomic batch.
func (n *Node) write(ctx context.Context, ms []*pb.Mutation) ([]*pb.WriteResult, error) {
	if max := n.cfg.Limits.MaxBatchMutations; len(ms) > max {
		return nil, status.Errorf(codes.ResourceExhausted, "mutations: %d in one batch, limit is %d", len(ms), max)
	}
	muts := make([]shard.Mutation, len(ms))
	for i, m := range ms {
		if err := n.convert(m, &muts[i]); err != nil {
			if len(ms) > 1 {
				return nil, status.Errorf(status.Code(err), "mutations[%d]: %s", i, status.Convert(err).Message())
			}
			return nil, err
		}
	}
	outcomes, err := n.store.Apply(ctx, muts)
	if err != nil {
		return nil, toStatus(err)
	}
	res := make([]*pb.WriteResult, len(muts))
	var counts [5][4]int // op, outcome
	for i := range muts {
		m := &muts[i]
		counts[m.Op][outcomes[i]]++
		res[i] = &pb.WriteResult{
			Version: &pb.Version{Hlc: uint64(m.Version.HLC), Site: m.Version.Site},
			Outcome: pb.Outcome(outcomes[i]),
			Shard:   m.Shard,
			Id:      m.ID,
		}
	}
	for op := range counts {
		for oc, c := range counts[op] {
			if c > 0 {
				n.metrics.mutations.WithLabelValues(shard.Op(op).String(), shard.Outcome(oc).String()).Add(float64(c))
			}
		}
	}
	return res, nil
}

// convert fills m from p: it picks the shard, assigns an entry id where one
// was asked for, and stamps or checks the version.
func (n *Node) convert(p *pb.Mutation, m *shard.Mutation) error {
	m.Table, m.Shard = p.Table, p.Shard
	switch op := p.Op.(type) {
	case *pb.Mutation_Put_:
		m.Op, m.Key, m.Value = shard.OpPut, op.Put.GetKey(), op.Put.GetValue()
	case *pb.Mutation_Delete_:
		m.Op, m.Key = shard.OpDelete, op.Delete.GetKey()
	case *pb.Mutation_Append_:
		m.Op, m.Owner, m.ID, m.Payload = shard.OpAppend, op.Append.GetOwner(), op.Append.GetId(), op.Append.GetPayload()
		if m.ID == 0 {
			m.ID = uint64(n.ids.Next())
		}
	case *pb.Mutation_Remove_:
		m.Op, m.Owner, m.ID = shard.OpRemove, op.Remove.GetOwner(), op.Remove.GetId()
	default:
		return invalidf("op is unset: one of put, delete, append, remove is required")
	}
	if m.Shard == "" {
		if m.Op == shard.OpPut || m.Op == shard.OpDelete {
			m.Shard = n.place.contentShard(m.Key)
		} else {
			m.Shard = n.place.ownerShard(m.Owner)
		}
	}
	if v := p.Version; v != nil {
		if v.Hlc == 0 {
			return invalidf("version.hlc is zero: leave version unset to have the node stamp one")
		}
		if v.Site > ids.MaxSite {
			return invalidf("version.site %d: must be in [0, %d]", v.Site, ids.MaxSite)
		}
		if _, err := n.hlc.Update(ids.Timestamp(v.Hlc)); err != nil {
			return invalidf("version.hlc: %v", err)
		}
		m.Version = shard.Version{HLC: ids.Timestamp(v.Hlc), Site: v.Site}
	} else {
		m.Version = shard.Version{HLC: n.hlc.Now(), Site: n.cfg.SiteID}
	}
	return nil
}

func pbVersion(v shard.Version) *pb.Version {
	return &pb.Version{Hlc: uint64(v.HLC), Site: v.Site}
}

func (d *dataServer) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	sh := r.Shard
	if sh == "" {
		sh = d.n.place.contentShard(r.Key)
	}
	v, err := d.n.store.Get(ctx, sh, r.Table, r.Key)
	if err != nil {
		return nil, toStatus(err)
	}
	return &pb.GetResponse{Value: v.Value, Version: pbVersion(v.Version)}, nil
}

func (d *dataServer) MultiGet(ctx context.Context, r *pb.MultiGetRequest) (*pb.MultiGetResponse, error) {
	if len(r.Keys) == 0 {
		return nil, invalidf("keys is empty")
	}
	if max := d.n.cfg.Limits.MaxRangeLimit; len(r.Keys) > max {
		return nil, status.Errorf(codes.OutOfRange, "keys: %d in one request, limit is %d", len(r.Keys), max)
	}
	// Group the keys by shard, keeping each key's position.
	type group struct {
		keys [][]byte
		pos  []int
	}
	groups := map[string]*group{}
	var order []string
	for i, k := range r.Keys {
		sh := r.Shard
		if sh == "" {
			sh = d.n.place.contentShard(k)
		}
		g := groups[sh]
		if g == nil {
			g = &group{}
			groups[sh] = g
			order = append(order, sh)
		}
		g.keys = append(g.keys, k)
		g.pos = append(g.pos, i)
	}
	items := make([]*pb.MultiGetResponse_Item, len(r.Keys))
	for _, sh := range order {
		g := groups[sh]
		vs, err := d.n.store.MultiGet(ctx, sh, r.Table, g.keys)
		if err != nil {
			return nil, toStatus(err)
		}
		for j, v := range vs {
			it := &pb.MultiGetResponse_Item{Key: g.keys[j]}
			if v != nil {
				it.Found, it.Value, it.Version = true, v.Value, pbVersion(v.Version)
			}
			items[g.pos[j]] = it
		}
	}
	return &pb.MultiGetResponse{Items: items}, nil
}

func (d *dataServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	sh := r.Shard
	if sh == "" {
		sh = d.n.place.ownerShard(r.Owner)
	}
	limit := int(r.Limit)
	if limit == 0 {
		limit = min(shard.DefaultRangeLimit, d.n.cfg.Limits.MaxRangeLimit)
	}
	es, err := d.n.store.Range(ctx, sh, r.Table, r.Owner, shard.RangeOptions{
		MaxID: r.MaxId, SinceID: r.SinceId, Limit: limit, Offset: int(r.Offset),
	})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.RangeResponse{Entries: make([]*pb.Entry, len(es))}
	for i, e := range es {
		resp.Entries[i] = &pb.Entry{Id: e.ID, Payload: e.Payload, Version: pbVersion(e.Version)}
	}
	if len(es) == limit && es[len(es)-1].ID > 1 {
		resp.NextMaxId = es[len(es)-1].ID - 1
	}
	return resp, nil
}

func (d *dataServer) Count(ctx context.Context, r *pb.CountRequest) (*pb.CountResponse, error) {
	sh := r.Shard
	if sh == "" {
		sh = d.n.place.ownerShard(r.Owner)
	}
	total, months, err := d.n.store.Count(ctx, sh, r.Table, r.Owner)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &pb.CountResponse{Total: total, Months: make([]*pb.CountResponse_Month, len(months))}
	for i, m := range months {
		resp.Months[i] = &pb.CountResponse_Month{Month: ids.MonthString(m.Month), Count: m.Count}
	}
	return resp, nil
}
