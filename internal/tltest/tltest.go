// Package tltest holds what the home timeline tests of several packages
// share: a follow graph, the posts acknowledged on it, and what every home
// timeline must then hold.
package tltest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"

	pb "github.com/aviarydb/aviary/api/aviarypb"
	"github.com/aviarydb/aviary/timeline/home"
)

// Graph is a follow graph of users 1..Users and the posts acknowledged on
// it.
type Graph struct {
	Users     int
	Following map[uint64][]uint64 // user -> the users they follow
	Posts     map[uint64][]uint64 // author -> status ids
}

// Zipf has each user follow up to follows others drawn from a Zipf
// distribution, so a few authors have very many followers.
func Zipf(r *rand.Rand, users, follows int) *Graph {
	g := &Graph{Users: users, Following: map[uint64][]uint64{}, Posts: map[uint64][]uint64{}}
	z := rand.NewZipf(r, 1.2, 1, uint64(users-1))
	for u := uint64(1); u <= uint64(users); u++ {
		seen := map[uint64]bool{u: true}
		for range follows {
			if f := z.Uint64() + 1; !seen[f] {
				seen[f] = true
				g.Following[u] = append(g.Following[u], f)
			}
		}
	}
	return g
}

// All is every status id on u's home timeline (u's posts and those of the
// users u follows), newest first.
func (g *Graph) All(u uint64) []uint64 {
	ids := slices.Clone(g.Posts[u])
	for _, f := range g.Following[u] {
		ids = append(ids, g.Posts[f]...)
	}
	slices.Sort(ids)
	slices.Reverse(ids)
	return ids
}

// Expected is the newest n status ids on u's home timeline.
func (g *Graph) Expected(u uint64, n int) []uint64 {
	ids := g.All(u)
	return ids[:min(n, len(ids))]
}

// StatusIDs lists the status ids of timeline entries, in order.
func StatusIDs(es []*pb.TimelineEntry) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = e.StatusId
	}
	return out
}

// FanoutPending says which of a site's fan-out queue partitions still holds
// posts, if one does (nil: every post was delivered).
func FanoutPending(ctx context.Context, data pb.DataClient, site uint32, partitions int) error {
	for p := range partitions {
		c, err := data.Count(ctx, &pb.CountRequest{Table: home.TableFanout, Owner: home.QueueOwner(site, p)})
		if err != nil {
			return err
		}
		if c.Total > 0 {
			return fmt.Errorf("fan-out partition %d holds %d posts", p, c.Total)
		}
	}
	return nil
}
