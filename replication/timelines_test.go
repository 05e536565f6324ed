package replication_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/internal/tltest"
	"github.com/aviarydb/aviary/node"
)

// TestTimelinesAcrossSites posts at one site and finds the post on the
// followers' home timelines at the other: the post and its fan-out queue
// entries travel through the relay like any write, and each site's workers
// push them to its own timelines. Both directions (multi-master).
func TestTimelinesAcrossSites(t *testing.T) {
	var sites []*site
	for i, name := range []string{"site-a", "site-b"} {
		sites = append(sites, startSiteWith(t, node.Config{SiteName: name, SiteID: uint32(i + 1), Timeline: true}))
	}
	link(t, sites)
	// Each site places its posts' fan-out on both sites once the map that
	// lists both is the one it routes with.
	for _, s := range sites {
		v := s.siteMap(t).Version
		waitFor(t, 10*time.Second, func() error {
			st, err := s.ns.Status(t.Context(), &pb.StatusRequest{})
			if err != nil || st.MapVersion < v {
				return fmt.Errorf("site %s routes with map %v, want %d: %v", s.name, st.GetMapVersion(), v, err)
			}
			return nil
		})
	}
	a, b := sites[0], sites[1]
	tlA, tlB := pb.NewTimelinesClient(a.cc), pb.NewTimelinesClient(b.cc)
	ctx := t.Context()
	const author, f1, f2 = 1, 2, 3
	for _, f := range []uint64{f1, f2} {
		if _, err := tlA.Follow(ctx, &pb.FollowRequest{FollowerId: f, FolloweeId: author}); err != nil {
			t.Fatal(err)
		}
	}
	// The follows reach site B; then the followers' and the author's
	// timelines are created at both sites (rebuilt, empty) by a first read,
	// so the posts below reach them by pushes, not by rebuilds.
	waitFor(t, 20*time.Second, func() error {
		for _, f := range []uint64{f1, f2} {
			r, err := b.data.Range(ctx, &pb.RangeRequest{Table: "following", Owner: f})
			if err != nil {
				return err
			}
			if len(r.Entries) != 1 || r.Entries[0].Id != author {
				return fmt.Errorf("site-b: %d follows %v", f, r.Entries)
			}
		}
		return nil
	})
	for _, c := range []pb.TimelinesClient{tlA, tlB} {
		if _, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: f1}, {Owner: f2}, {Owner: author}}}); err != nil {
			t.Fatal(err)
		}
	}

	posted := map[*site][]uint64{}
	for _, s := range sites { // a post at each site
		r, err := pb.NewTimelinesClient(s.cc).Post(ctx, &pb.PostRequest{AuthorId: author})
		if err != nil {
			t.Fatal(err)
		}
		posted[s] = append(posted[s], r.StatusId)
	}
	want := append(slices.Clone(posted[a]), posted[b]...)
	slices.Sort(want)
	slices.Reverse(want)
	for _, s := range sites {
		c := pb.NewTimelinesClient(s.cc)
		waitFor(t, 20*time.Second, func() error {
			r, err := c.Read(ctx, &pb.ReadRequest{Queries: []*pb.TimelineQuery{{Owner: f1}, {Owner: f2}, {Owner: author}}})
			if err != nil {
				return err
			}
			for _, res := range r.Results {
				if res.Rebuilt {
					t.Fatalf("site %s rebuilt timeline %d: it was created before the posts, which must arrive by pushes", s.name, res.Owner)
				}
				if got := tltest.StatusIDs(res.Entries); !slices.Equal(got, want) {
					return fmt.Errorf("site %s: timeline %d holds %v, want %v", s.name, res.Owner, got, want)
				}
			}
			return nil
		})
		// Each site delivered from its own queue, and emptied it.
		waitFor(t, 10*time.Second, func() error {
			return tltest.FanoutPending(ctx, s.data, s.id, 16)
		})
	}
}
