package node

import (
	"context"
	"net"
	"sync"
	"time"

	"github.com/aviarydb/aviary/internal/tlsx"
	"golang.org/x/time/rate"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// clientLimits bounds the calls per second of each client: the identity of
// its certificate, or its IP address without TLS. Nodes and relays (the
// site's own traffic) are not limited.
type clientLimits struct {
	rate  rate.Limit
	burst int

	mu      sync.Mutex
	clients map[string]*clientLimit
}

type clientLimit struct {
	lim  *rate.Limiter
	used time.Time
}

// maxTrackedClients bounds the limiters kept; beyond it, those idle longest
// are forgotten (a client forgotten starts again with a full burst).
const maxTrackedClients = 10000

func newClientLimits(perSecond float64, burst int) *clientLimits {
	if perSecond <= 0 {
		return nil
	}
	return &clientLimits{rate: rate.Limit(perSecond), burst: max(burst, 1), clients: map[string]*clientLimit{}}
}

// allow reports whether the client of ctx, whose identity is id if known,
// may make a call now, and names it.
func (l *clientLimits) allow(ctx context.Context, id tlsx.Identity, known bool) (string, bool) {
	key := ""
	if known {
		if id.Role == tlsx.RoleNode || id.Role == tlsx.RoleRelay {
			return id.String(), true
		}
		key = id.String()
	} else if p, ok := peer.FromContext(ctx); ok {
		key = p.Addr.String()
		if host, _, err := net.SplitHostPort(key); err == nil {
			key = host
		}
	}
	now := time.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.clients[key]
	if !ok {
		if len(l.clients) >= maxTrackedClients {
			l.forgetIdle(now)
		}
		c = &clientLimit{lim: rate.NewLimiter(l.rate, l.burst)}
		l.clients[key] = c
	}
	c.used = now
	return key, c.lim.AllowN(now, 1)
}

// forgetIdle drops the limiters not used for a minute, or, if none is, all.
func (l *clientLimits) forgetIdle(now time.Time) {
	for k, c := range l.clients {
		if now.Sub(c.used) > time.Minute {
			delete(l.clients, k)
		}
	}
	if len(l.clients) >= maxTrackedClients {
		clear(l.clients)
	}
}

// rateLimit refuses a call of a client above its rate (no limit: nil).
func (n *Node) rateLimit(ctx context.Context, id tlsx.Identity, known bool) error {
	if n.limits == nil {
		return nil
	}
	if who, ok := n.limits.allow(ctx, id, known); !ok {
		n.metrics.rateLimited.Inc()
		return status.Errorf(codes.ResourceExhausted, "rate limit: %s is above %g calls per second (burst %d); slow down and retry", who, float64(n.limits.rate), n.limits.burst)
	}
	return nil
}
