// Echo + rooms + auth in Go: the contract `corelay backend-check` drives
// (docs/backend-check.md). Honours CORELAY_ATTACH, CORELAY_ROUTE, CORELAY_HEARTBEAT_MS and
// CORELAY_TAG.
//
//	CGO_LDFLAGS=-L<dir with libcorelay_backend.a> go build -o check_backend ./examples/check_backend
//	corelay backend-check -- ./check_backend
package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"corelay.dev/backend"
)

const (
	token       = "letmein"
	subprotocol = "check.v1"
)

type held struct {
	d     backend.Deferred
	reply []byte
}

type checkService struct {
	tag  []byte
	open map[uint64]struct{}
	held map[uint64]held
}

func (s *checkService) OnOpen(c *backend.Ctx, conn uint64, req *backend.OpenRequest) backend.Verdict {
	if req.Path == "/deny" {
		return backend.Reject(403)
	}
	if req.Path == "/auth" {
		q, _ := req.QueryParam("token")
		h, _ := req.Header("authorization")
		if q != token && string(h) != "Bearer "+token {
			return backend.Reject(401)
		}
	}
	s.open[conn] = struct{}{}
	if req.Path == "/proto" {
		offered, _ := req.Header("sec-websocket-protocol")
		for _, p := range strings.Split(string(offered), ",") {
			if strings.TrimSpace(p) == subprotocol {
				return backend.Accept(subprotocol)
			}
		}
	}
	return backend.Accept("")
}

func (s *checkService) OnMessage(c *backend.Ctx, conn uint64, data []byte, binary bool) {
	earlier, hadEarlier := s.held[conn]
	delete(s.held, conn)
	text := func(prefix string) ([]byte, bool) {
		if binary || !bytes.HasPrefix(data, []byte(prefix)) {
			return nil, false
		}
		return data[len(prefix):], true
	}
	if t, ok := text("count"); ok && len(t) == 0 {
		c.Reply([]byte(strconv.Itoa(len(s.open))), false)
	} else if t, ok := text("close"); ok && len(t) == 0 {
		c.Close(conn, 4000, "bye")
		c.Done()
	} else if x, ok := text("hold:"); ok {
		s.hold(c, conn, x, false)
	} else if x, ok := text("holdack:"); ok {
		s.hold(c, conn, x, true)
	} else if r, ok := text("join:"); ok {
		c.Join(conn, backend.GroupID(string(r)))
		c.Reply(append([]byte("joined:"), r...), false)
	} else if r, ok := text("leave:"); ok {
		c.Leave(conn, backend.GroupID(string(r)))
		c.Reply(append([]byte("left:"), r...), false)
	} else if rm, ok := text("pub:"); ok && bytes.IndexByte(rm, ':') >= 0 {
		i := bytes.IndexByte(rm, ':')
		c.Publish(backend.GroupID(string(rm[:i])), rm[i+1:], false)
		c.Done()
	} else if x, ok := text("push:"); ok {
		c.Send(conn, x, false)
		c.Reply([]byte("pushed"), false)
	} else {
		c.Reply(append(append([]byte{}, s.tag...), data...), binary)
	}
	if hadEarlier { // completed after the later request: out of order
		c.ReplyTo(earlier.d, earlier.reply, false)
	}
}

// hold defers the request; the connection's next message completes it with x.
func (s *checkService) hold(c *backend.Ctx, conn uint64, x []byte, ack bool) {
	d, ok := c.Defer()
	if !ok {
		return
	}
	s.held[conn] = held{d: d, reply: append([]byte(nil), x...)}
	if ack {
		c.Send(conn, []byte("held"), false) // at once: the checker knows it is deferred
	}
}

func (s *checkService) OnClosed(c *backend.Ctx, conn uint64, code uint16, reason []byte) {
	delete(s.open, conn)
	if h, ok := s.held[conn]; ok {
		delete(s.held, conn)
		c.DoneWith(h.d)
	}
}

func main() {
	b, err := backend.AttachEnv(10 * time.Second)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer b.Close()
	fmt.Fprintf(os.Stderr, "go backend attached (%d shards)\n", b.Shards())
	s := &checkService{
		tag:  []byte(os.Getenv("CORELAY_TAG")),
		open: map[uint64]struct{}{},
		held: map[uint64]held{},
	}
	if err := b.Run(s); err != nil && !errors.Is(err, backend.ErrGatewayGone) {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
