package nameserver

import (
	"context"
	"net"
	"time"

	"github.com/aviarydb/aviary/internal/netx"
	"github.com/hashicorp/raft"
)

// streamLayer carries raft's RPCs over a listener and dialer made by netx,
// so raft's links get transport security where every other link does: with
// TLS, both ends must be nodes of the site.
type streamLayer struct {
	net.Listener
	sec *netx.Security
}

var _ raft.StreamLayer = streamLayer{}

func (s streamLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return s.sec.DialStream(ctx, string(addr), s.sec.NodePeer())
}
