package node

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/gizzard"
	"github.com/aviarydb/aviary/gizzard/router"
	"github.com/aviarydb/aviary/ids"
	"github.com/aviarydb/aviary/shard"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// dataServer implements the Data service on a Node.
type dataServer struct {
	pb.UnimplementedDataServer
	n *Node
}

func (d *dataServer) Put(ctx context.Context, r *pb.PutRequest) (*pb.WriteResult, error) {
	return d.one(ctx, r.Consistency, r.Mutation())
}

func (d *dataServer) Delete(ctx context.Context, r *pb.DeleteRequest) (*pb.WriteResult, error) {
	return d.one(ctx, r.Consistency, r.Mutation())
}

func (d *dataServer) Append(ctx context.Context, r *pb.AppendRequest) (*pb.WriteResult, error) {
	return d.one(ctx, r.Consistency, r.Mutation())
}

func (d *dataServer) Remove(ctx context.Context, r *pb.RemoveRequest) (*pb.WriteResult, error) {
	return d.one(ctx, r.Consistency, r.Mutation())
}

func (d *dataServer) one(ctx context.Context, c pb.Consistency, m *pb.Mutation) (*pb.WriteResult, error) {
	res, err := d.n.write(ctx, []*pb.Mutation{m}, c)
	if err != nil {
		return nil, err
	}
	return res[0], nil
}

func (d *dataServer) Write(ctx context.Context, r *pb.WriteRequest) (*pb.WriteResponse, error) {
	if len(r.Mutations) == 0 {
		return nil, invalidf("mutations is empty")
	}
	res, err := d.n.write(ctx, r.Mutations, r.Consistency)
	if err != nil {
		return nil, err
	}
	return &pb.WriteResponse{Results: res}, nil
}

// write converts and stamps mutations, then applies them as one atomic
// batch (with other calls' writes, see commitQueue): to the named shards of
// this node directly, or, when they name no shard, through the router.
func (n *Node) write(ctx context.Context, ms []*pb.Mutation, c pb.Consistency) ([]*pb.WriteResult, error) {
	p, err := n.prepare(ms, c)
	if err != nil {
		return nil, err
	}
	d, _ := ctx.Deadline()
	p, release, err := n.admit(ctx, ms, c, p, d)
	if err != nil {
		return nil, err
	}
	return n.commits.apply(ctx, p, c, release)
}

// admit takes room in the node's write budget for a client's write p of
// ms (not for Aviary's own: router.Internal), waiting for it until near
// deadline; release gives it back once the write is answered. A write
// that had to wait is prepared again, so that its versions and ids are
// stamped when it is taken, not before the wait.
func (n *Node) admit(ctx context.Context, ms []*pb.Mutation, c pb.Consistency, p prepared, deadline time.Time) (_ prepared, release func(), err error) {
	if router.IsInternal(ctx) {
		return p, func() {}, nil
	}
	release, waited, err := n.budget.take(ctx, p.bytes, deadline)
	if err != nil {
		return p, nil, err
	}
	if waited {
		if p, err = n.prepare(ms, c); err != nil {
			release()
			return p, nil, err
		}
	}
	return p, release, nil
}

// prepared is a batch of mutations converted, stamped and checked, ready
// to apply.
type prepared struct {
	muts  []shard.Mutation
	named bool // every mutation names a physical shard of this node
	bytes int  // what the mutations count toward the batch byte limit
	// local: acknowledged by this node alone (named, or router.Local), so
	// it may share a batch with others (commitQueue).
	local bool
}

// prepare converts and stamps ms and checks them as far as can be done
// without applying them, for consistency c.
func (n *Node) prepare(ms []*pb.Mutation, c pb.Consistency) (prepared, error) {
	if max := n.cfg.Limits.MaxBatchMutations; len(ms) > max {
		return prepared{}, status.Errorf(codes.ResourceExhausted, "mutations: %d in one batch, limit is %d", len(ms), max)
	}
	muts := make([]shard.Mutation, len(ms))
	named := 0
	for i, m := range ms {
		if err := n.convert(m, &muts[i]); err != nil {
			if len(ms) > 1 {
				return prepared{}, status.Errorf(status.Code(err), "mutations[%d]: %s", i, status.Convert(err).Message())
			}
			return prepared{}, err
		}
		if muts[i].Shard != "" {
			named++
		}
	}
	if named > 0 && named < len(muts) {
		return prepared{}, invalidf("mutations: %d of %d name a shard: a batch names shards for all its mutations or for none", named, len(muts))
	}
	if named == 0 {
		if !n.ready.Load() {
			return prepared{}, status.Error(codes.Unavailable, "node is not ready: it is not part of its site's shard map yet")
		}
		if err := n.store.Check(muts); err != nil {
			return prepared{}, toStatus(err)
		}
	}
	p := prepared{muts: muts, named: named > 0}
	for i := range muts {
		p.bytes += muts[i].Size()
	}
	if lim := n.cfg.Limits.MaxBatchBytes; p.bytes > lim { // checked above unless the batch names shards
		return prepared{}, toStatus(fmt.Errorf("%w: %d bytes of keys, values and payloads, limit is %d", shard.ErrTooLarge, p.bytes, lim))
	}
	p.local = p.named || n.router.Local(muts, routerConsistency(c))
	return p, nil
}

// apply applies p as one atomic batch (per shard) and acknowledges it once
// durable.
func (n *Node) apply(ctx context.Context, p prepared, c pb.Consistency) ([]*pb.WriteResult, error) {
	outcomes, rr, err := n.applyMuts(ctx, p.muts, p.named, c)
	if err != nil {
		return nil, toStatus(err)
	}
	return n.results(p.muts, outcomes, rr), nil
}

// applyMuts applies muts to the named shards of this node (outcomes) or
// through the router (rr, also returned with ErrNotEnoughReplicas).
func (n *Node) applyMuts(ctx context.Context, muts []shard.Mutation, named bool, c pb.Consistency) ([]shard.Outcome, []router.Result, error) {
	if named {
		outcomes, err := n.store.Apply(ctx, muts)
		return outcomes, nil, err
	}
	rr, err := n.router.Write(ctx, muts, routerConsistency(c))
	return nil, rr, err
}

func routerConsistency(c pb.Consistency) router.Consistency {
	if c == pb.Consistency_CONSISTENCY_ALL {
		return router.All
	}
	return router.DefaultConsistency
}

// results are the answers to muts applied to named shards (outcomes) or
// through the router (rr), counted in the node's metrics.
func (n *Node) results(muts []shard.Mutation, outcomes []shard.Outcome, rr []router.Result) []*pb.WriteResult {
	res := make([]*pb.WriteResult, len(muts))
	var counts [5][4]int // op, outcome
	for i := range muts {
		m := &muts[i]
		if rr != nil {
			res[i] = &pb.WriteResult{Outcome: pb.Outcome(rr[i].Outcome), Shard: rr[i].Root, Replicas: uint32(rr[i].Replicas), Acked: uint32(rr[i].Acked)}
		} else {
			res[i] = &pb.WriteResult{Outcome: pb.Outcome(outcomes[i]), Shard: m.Shard, Replicas: 1, Acked: 1}
		}
		res[i].Version = pbVersion(m.Version)
		res[i].Id = m.ID
		counts[m.Op][res[i].Outcome]++
	}
	for op := range counts {
		for oc, c := range counts[op] {
			if c > 0 {
				n.metrics.mutations.WithLabelValues(shard.Op(op).String(), shard.Outcome(oc).String()).Add(float64(c))
			}
		}
	}
	return res
}

// convert fills m from p: it assigns an entry id where one was asked for,
// and stamps or checks the version.
func (n *Node) convert(p *pb.Mutation, m *shard.Mutation) error {
	if err := router.FromProto(p, m); err != nil {
		return toStatus(err)
	}
	if m.Op == shard.OpAppend && m.ID == 0 {
		m.ID = uint64(n.ids.Next())
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
	} else {
		m.Version = shard.Version{HLC: n.hlc.Now(), Site: n.cfg.SiteID}
	}
	return nil
}

func pbVersion(v shard.Version) *pb.Version {
	return &pb.Version{Hlc: uint64(v.HLC), Site: v.Site}
}

// readFrom runs read against the replicas of the tree that hash h of table
// goes to, in the router's order, until one answers. A replica that is
// down, slow or does not hold the shard yet is skipped; any other answer
// (including "key not found") is final. Aviary's own reads
// (router.Internal: the timeline fan-out's) try this node's replica first,
// if it has one, sparing a call to another node; clients' reads are spread
// over the replicas by their weights.
//
// With hedged (Gets: reads of one key, alike in cost), a remote replica
// that has not answered after the hedge delay (the p95 of recent hedged
// remote reads, within --hedge-min..--hedge-max) while others remain is
// not waited for alone: the next replica is asked too, and the first
// answer wins (the others are cancelled, and so are not judged). Without
// hedged, and for a hedged read that no other replica answers first, a
// remote replica that does not answer within ReplicaTimeout while others
// remain is taken for down, as a delivery that times out is: a node that
// hangs must not hold the read until the caller's deadline. This node's
// own replica is read in place.
func readFrom[T any](ctx context.Context, n *Node, table string, h uint64, hedged bool, read func(ctx context.Context, leaf gizzard.Leaf, remote pb.DataClient) (T, error)) (T, error) {
	var zero T
	if !n.ready.Load() {
		return zero, status.Error(codes.Unavailable, "node is not ready: it is not part of its site's shard map yet")
	}
	m, leaves, err := n.router.ReadCandidates(table, h)
	if err != nil {
		return zero, toStatus(err)
	}
	if router.IsInternal(ctx) {
		if i := slices.IndexFunc(leaves, func(l gizzard.Leaf) bool { return l.Node == n.cfg.NodeID }); i > 0 {
			leaves = slices.Concat(leaves[i:i+1], leaves[:i], leaves[i+1:])
		}
	}
	// A replica on a node that a delivery found unavailable, and that no
	// delivery has reached since, or that a read found so less than a
	// second ago, is asked last.
	if down := n.router.NodesDown(leaves); slices.Contains(down, true) {
		var up, last []gizzard.Leaf
		for i, l := range leaves {
			if down[i] {
				last = append(last, l)
			} else {
				up = append(up, l)
			}
		}
		leaves = append(up, last...)
	}

	type answer struct {
		i   int // into leaves
		v   T
		err error
	}
	var (
		errs     []string
		next     int // the next replica to ask
		inflight int
		answers  chan answer
		hedge    *time.Timer
		actx     context.Context // the remote reads', made with the first
		cancel   context.CancelFunc
	)
	defer func() {
		if cancel != nil {
			cancel() // ends the reads that lost
		}
	}()
	// settle takes the answer of leaf i: final (done), or the next replica
	// is to be asked.
	settle := func(a answer, remote bool) (done bool) {
		leaf, err := leaves[a.i], toStatus(a.err)
		switch {
		case !remote || ctx.Err() != nil:
		case err == nil:
			n.router.NodeReadAnswered(leaf.Node)
		default:
			n.router.NodeUnavailable(leaf.Node, err)
		}
		if err == nil || !failOver(err) {
			return true
		}
		errs = append(errs, fmt.Sprintf("%s: %v", router.Target(leaf), status.Convert(err).Message()))
		return false
	}
	// ask asks the next replica that can be asked: in place if it is this
	// node's, else from a goroutine. It reports whether it asked one, and
	// the answer if it was this node's.
	ask := func() (local *answer, asked bool) {
		for next < len(leaves) {
			i, leaf := next, leaves[next]
			next++
			if leaf.Node == n.cfg.NodeID {
				v, err := read(ctx, leaf, nil)
				return &answer{i, v, err}, true
			}
			node, ok := m.Nodes[leaf.Node]
			if !ok {
				errs = append(errs, fmt.Sprintf("%s: node %q not in the map", leaf.Shard, leaf.Node))
				continue
			}
			remote, err := n.remotes.data(node.GRPCAddr)
			if err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", router.Target(leaf), err))
				continue
			}
			if actx == nil {
				actx, cancel = context.WithCancel(ctx)
				answers = make(chan answer, len(leaves))
			}
			rctx, stop := actx, context.CancelFunc(func() {})
			if i < len(leaves)-1 {
				rctx, stop = context.WithTimeout(actx, n.cfg.ReplicaTimeout)
			}
			inflight++
			start := time.Now()
			go func() {
				v, err := read(rctx, leaf, remote)
				stop()
				if err == nil && hedged {
					n.readHedge.Record(time.Since(start))
				}
				answers <- answer{i, v, err}
			}()
			return nil, true
		}
		return nil, false
	}
	// askNow asks the next replicas until one is out or one of this
	// node's answers finally (done).
	askNow := func() (local *answer, done bool) {
		for next < len(leaves) {
			local, asked := ask()
			if !asked || local == nil {
				return nil, false
			}
			if settle(*local, false) {
				return local, true
			}
		}
		return nil, false
	}
	for ctx.Err() == nil {
		if inflight == 0 {
			if local, done := askNow(); done {
				return local.v, toStatus(local.err)
			}
			if inflight == 0 {
				break // every replica asked
			}
		}
		// A remote read is out: wait for it, and (hedged) past the hedge
		// delay ask the next replica too.
		var fire <-chan time.Time
		if hedged && next < len(leaves) {
			d := n.readHedge.Delay(n.cfg.Timelines.HedgeMin, n.cfg.Timelines.HedgeMax)
			if hedge == nil {
				hedge = time.NewTimer(d)
				defer hedge.Stop()
			} else {
				hedge.Reset(d)
			}
			fire = hedge.C
		}
		select {
		case a := <-answers:
			inflight--
			if settle(a, true) {
				return a.v, toStatus(a.err)
			}
			// Failed: the next is asked at once, another read out or not.
			if local, done := askNow(); done {
				return local.v, toStatus(local.err)
			}
		case <-fire:
			before := next
			local, done := askNow()
			if next > before {
				n.metrics.readHedges.Inc()
			}
			if done {
				return local.v, toStatus(local.err)
			}
		case <-ctx.Done():
		}
	}
	if err := ctx.Err(); err != nil {
		return zero, status.FromContextError(err).Err()
	}
	return zero, status.Errorf(codes.Unavailable, "no replica answered (%d tried): %s", len(leaves), strings.Join(errs, "; "))
}

// readRouted answers a read from the named physical shard of this node, or,
// when the request names none, from the replicas of the tree that hash h of
// table routes to (readFrom). local reads a shard of this node; remote asks
// a peer for its shard.
func readRouted[T any](ctx context.Context, n *Node, table, named string, h uint64, hedged bool,
	local func(shard string) (T, error), remote func(ctx context.Context, c pb.DataClient, shard string) (T, error)) (T, error) {
	if named != "" {
		r, err := local(named)
		return r, toStatus(err)
	}
	return readFrom(ctx, n, table, h, hedged, func(ctx context.Context, leaf gizzard.Leaf, c pb.DataClient) (T, error) {
		if c != nil {
			return remote(ctx, c, leaf.Shard)
		}
		return local(leaf.Shard)
	})
}

// failOver reports whether a read error means "try the next replica".
func failOver(err error) bool {
	if router.Unavailable(err) {
		return true
	}
	st := status.Convert(err)
	return st.Code() == codes.NotFound && strings.Contains(st.Message(), shard.ErrShardNotFound.Error())
}

// testHookNamedGet, if set, runs on the node serving a Get that names its
// shard (as a routed read of another node's replica does), before it
// reads.
var testHookNamedGet atomic.Pointer[func(node string)]

func (d *dataServer) Get(ctx context.Context, r *pb.GetRequest) (*pb.GetResponse, error) {
	if hook := testHookNamedGet.Load(); hook != nil && r.Shard != "" {
		(*hook)(d.n.cfg.NodeID)
	}
	return readRouted(ctx, d.n, r.Table, r.Shard, gizzard.Hash(r.Key), true,
		func(sh string) (*pb.GetResponse, error) {
			v, err := d.n.store.Get(ctx, sh, r.Table, r.Key)
			if err != nil {
				return nil, err
			}
			return &pb.GetResponse{Value: v.Value, Version: pbVersion(v.Version)}, nil
		},
		func(ctx context.Context, c pb.DataClient, sh string) (*pb.GetResponse, error) {
			return c.Get(ctx, &pb.GetRequest{Table: r.Table, Key: r.Key, Shard: sh})
		})
}

func (d *dataServer) MultiGet(ctx context.Context, r *pb.MultiGetRequest) (*pb.MultiGetResponse, error) {
	if len(r.Keys) == 0 {
		return nil, invalidf("keys is empty")
	}
	if max := d.n.cfg.Limits.MaxRangeLimit; len(r.Keys) > max {
		return nil, status.Errorf(codes.OutOfRange, "keys: %d in one request, limit is %d", len(r.Keys), max)
	}
	items := make([]*pb.MultiGetResponse_Item, len(r.Keys))
	fill := func(pos []int, keys [][]byte, vs []*shard.Value) {
		for j, v := range vs {
			it := &pb.MultiGetResponse_Item{Key: keys[j]}
			if v != nil {
				it.Found, it.Value, it.Version = true, v.Value, pbVersion(v.Version)
			}
			items[pos[j]] = it
		}
	}
	if r.Shard != "" {
		vs, err := d.n.store.MultiGet(ctx, r.Shard, r.Table, r.Keys)
		if err != nil {
			return nil, toStatus(err)
		}
		fill(seq(len(r.Keys)), r.Keys, vs)
		return &pb.MultiGetResponse{Items: items}, nil
	}
	// Keys routed to the same shard tree are read together.
	type group struct {
		hash uint64
		keys [][]byte
		pos  []int
	}
	m := d.n.ns.Map()
	groups := map[string]*group{}
	var order []string
	for i, k := range r.Keys {
		h := gizzard.Hash(k)
		root := ""
		if fw, err := m.Lookup(r.Table, h); err == nil {
			root = fw.Root
		}
		g := groups[root]
		if g == nil {
			g = &group{hash: h}
			groups[root] = g
			order = append(order, root)
		}
		g.keys = append(g.keys, k)
		g.pos = append(g.pos, i)
	}
	for _, root := range order {
		g := groups[root]
		// Each replica asked answers into its own result, only the
		// one that answers for the group is used.
		type result struct {
			items []*pb.MultiGetResponse_Item // remote
			vs    []*shard.Value              // local
		}
		res, err := readFrom(ctx, d.n, r.Table, g.hash, false, func(ctx context.Context, leaf gizzard.Leaf, remote pb.DataClient) (result, error) {
			if remote != nil {
				resp, err := remote.MultiGet(ctx, &pb.MultiGetRequest{Table: r.Table, Keys: g.keys, Shard: leaf.Shard})
				if err != nil {
					return result{}, err
				}
				if len(resp.Items) != len(g.keys) {
					return result{}, status.Errorf(codes.Internal, "replica %s answered %d items for %d keys", router.Target(leaf), len(resp.Items), len(g.keys))
				}
				return result{items: resp.Items}, nil
			}
			vs, err := d.n.store.MultiGet(ctx, leaf.Shard, r.Table, g.keys)
			return result{vs: vs}, err
		})
		if err != nil {
			return nil, err
		}
		if res.items != nil {
			for j, it := range res.items {
				items[g.pos[j]] = it
			}
		} else {
			fill(g.pos, g.keys, res.vs)
		}
	}
	return &pb.MultiGetResponse{Items: items}, nil
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}

func (d *dataServer) Range(ctx context.Context, r *pb.RangeRequest) (*pb.RangeResponse, error) {
	limit := int(r.Limit)
	if limit == 0 {
		limit = min(shard.DefaultRangeLimit, d.n.cfg.Limits.MaxRangeLimit)
	}
	local := func(sh string) (*pb.RangeResponse, error) {
		es, err := d.n.store.Range(ctx, sh, r.Table, r.Owner, shard.RangeOptions{
			MaxID: r.MaxId, SinceID: r.SinceId, Limit: limit, Offset: int(r.Offset),
		})
		if err != nil {
			return nil, err
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
	if r.Shard == "" && r.Owner == 0 {
		return nil, invalidf("owner is zero (unset)")
	}
	return readRouted(ctx, d.n, r.Table, r.Shard, gizzard.OwnerHash(r.Owner), false, local,
		func(ctx context.Context, c pb.DataClient, sh string) (*pb.RangeResponse, error) {
			q := proto.Clone(r).(*pb.RangeRequest)
			q.Shard = sh
			return c.Range(ctx, q)
		})
}

func (d *dataServer) Count(ctx context.Context, r *pb.CountRequest) (*pb.CountResponse, error) {
	local := func(sh string) (*pb.CountResponse, error) {
		total, months, err := d.n.store.Count(ctx, sh, r.Table, r.Owner)
		if err != nil {
			return nil, err
		}
		resp := &pb.CountResponse{Total: total, Months: make([]*pb.CountResponse_Month, len(months))}
		for i, m := range months {
			resp.Months[i] = &pb.CountResponse_Month{Month: ids.MonthString(m.Month), Count: m.Count}
		}
		return resp, nil
	}
	if r.Shard == "" && r.Owner == 0 {
		return nil, invalidf("owner is zero (unset)")
	}
	return readRouted(ctx, d.n, r.Table, r.Shard, gizzard.OwnerHash(r.Owner), false, local,
		func(ctx context.Context, c pb.DataClient, sh string) (*pb.CountResponse, error) {
			return c.Count(ctx, &pb.CountRequest{Table: r.Table, Owner: r.Owner, Shard: sh})
		})
}
