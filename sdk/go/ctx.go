package backend

/*
#include <stdint.h>
#include "corelay_backend.h"
*/
import "C"

import (
	"net"
	"unsafe"
)

// Verdict on a new connection: Accept or Reject.
type Verdict struct {
	reject      uint16
	subprotocol string
}

// Accept completes the upgrade, confirming subprotocol ("" = none; it must be one the
// client offered).
func Accept(subprotocol string) Verdict { return Verdict{subprotocol: subprotocol} }

// Reject refuses the upgrade with an HTTP status (e.g. 401, 403).
func Reject(status uint16) Verdict { return Verdict{reject: status} }

// Header is one forwarded request header (name in lower case).
type Header struct {
	Name  string
	Value []byte
}

// OpenRequest is a new connection's upgrade request.
type OpenRequest struct {
	Protocol uint8  // 0 WebSocket, 1 media, 2 live
	Addr     net.IP // nil if unknown
	Port     uint16
	Path     string
	Query    string
	Headers  []Header
}

// Header returns the first forwarded header with this lower-case name.
func (r *OpenRequest) Header(name string) ([]byte, bool) {
	for _, h := range r.Headers {
		if h.Name == name {
			return h.Value, true
		}
	}
	return nil, false
}

// QueryParam returns the value of a query parameter (no percent-decoding).
func (r *OpenRequest) QueryParam(name string) (string, bool) {
	q := r.Query
	for q != "" {
		kv := q
		if i := indexByte(q, '&'); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			q = ""
		}
		k, v := kv, ""
		if i := indexByte(kv, '='); i >= 0 {
			k, v = kv[:i], kv[i+1:]
		}
		if k == name {
			return v, true
		}
	}
	return "", false
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// Service is your business logic. Embed BaseService and override what you need.
type Service interface {
	// OnOpen: a client wants to connect.
	OnOpen(c *Ctx, conn uint64, req *OpenRequest) Verdict
	// OnMessage: a client message. Answer with c.Reply, complete with c.Done, or put off
	// with c.Defer; returning without any of these completes it with nothing. data is valid
	// during the call only (copy it to keep it).
	OnMessage(c *Ctx, conn uint64, data []byte, binary bool)
	// OnClosed: the connection is gone (close code; 1006 if it dropped).
	OnClosed(c *Ctx, conn uint64, code uint16, reason []byte)
}

// BaseService accepts every connection, completes every message with nothing and ignores
// closes.
type BaseService struct{}

// OnOpen accepts.
func (BaseService) OnOpen(*Ctx, uint64, *OpenRequest) Verdict { return Accept("") }

// OnMessage completes with nothing.
func (BaseService) OnMessage(*Ctx, uint64, []byte, bool) {}

// OnClosed ignores the close.
func (BaseService) OnClosed(*Ctx, uint64, uint16, []byte) {}

// Deferred is a request whose completion was put off with Ctx.Defer.
type Deferred struct {
	Conn uint64
	Seq  uint64
}

// Ctx is what a callback acts through; valid during the callback (or WithCtx) only.
type Ctx struct {
	c *C.corelay_ctx
}

func cbool(b bool) C.int {
	if b {
		return 1
	}
	return 0
}

// Reply answers the request being handled (delivered in request order; empty is a message).
func (c *Ctx) Reply(data []byte, binary bool) {
	C.corelay_reply(c.c, cbool(binary), bytesPtr(data), C.size_t(len(data)))
}

// Done completes the request being handled without sending anything.
func (c *Ctx) Done() { C.corelay_done(c.c) }

// Defer puts off the request being handled; complete it later with ReplyTo or DoneWith.
// Until then the backend does not commit past it (a successor gets it again).
func (c *Ctx) Defer() (Deferred, bool) {
	var d C.corelay_deferred
	if C.corelay_defer(c.c, &d) != 0 {
		return Deferred{}, false
	}
	return Deferred{Conn: uint64(d.conn), Seq: uint64(d.seq)}, true
}

func (d Deferred) c() C.corelay_deferred {
	return C.corelay_deferred{conn: C.uint64_t(d.Conn), seq: C.uint64_t(d.Seq)}
}

// ReplyTo answers a deferred request; false if it was already completed.
func (c *Ctx) ReplyTo(d Deferred, data []byte, binary bool) bool {
	return C.corelay_reply_to(c.c, d.c(), cbool(binary), bytesPtr(data), C.size_t(len(data))) == 0
}

// DoneWith completes a deferred request without a message; false if already completed.
func (c *Ctx) DoneWith(d Deferred) bool { return C.corelay_done_with(c.c, d.c()) == 0 }

// Send pushes a message to a connection now (outside the reply order).
func (c *Ctx) Send(conn uint64, data []byte, binary bool) {
	C.corelay_send(c.c, C.uint64_t(conn), cbool(binary), bytesPtr(data), C.size_t(len(data)))
}

// Close closes a connection with a WebSocket close code and a UTF-8 reason.
func (c *Ctx) Close(conn uint64, code uint16, reason string) {
	r := []byte(reason)
	C.corelay_close(c.c, C.uint64_t(conn), C.uint16_t(code), bytesPtr(r), C.size_t(len(r)))
}

// Join adds a connection to a group (see GroupID).
func (c *Ctx) Join(conn, group uint64) { C.corelay_join(c.c, C.uint64_t(conn), C.uint64_t(group)) }

// Leave removes a connection from a group.
func (c *Ctx) Leave(conn, group uint64) { C.corelay_leave(c.c, C.uint64_t(conn), C.uint64_t(group)) }

// Publish sends to every member of a group on every shard.
func (c *Ctx) Publish(group uint64, data []byte, binary bool) {
	C.corelay_publish(c.c, C.uint64_t(group), cbool(binary), bytesPtr(data), C.size_t(len(data)))
}

// cBytes views C memory as a slice valid while C keeps it (during the callback).
func cBytes(p *C.uint8_t, n C.size_t) []byte {
	if n == 0 || p == nil {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n))
}

// decodeOpen copies the request out of C memory (it is valid during OnOpen only).
func decodeOpen(r *C.corelay_open_request) *OpenRequest {
	req := &OpenRequest{
		Protocol: uint8(r.protocol),
		Port:     uint16(r.port),
		Path:     string(cBytes(r.path, r.path_len)),
		Query:    string(cBytes(r.query, r.query_len)),
	}
	switch r.family {
	case 4:
		req.Addr = net.IP(C.GoBytes(unsafe.Pointer(&r.addr[0]), 4))
	case 6:
		req.Addr = net.IP(C.GoBytes(unsafe.Pointer(&r.addr[0]), 16))
	}
	for i := C.size_t(0); i < r.header_count; i++ {
		var name, value *C.uint8_t
		var nl, vl C.size_t
		if C.corelay_open_header(r, i, &name, &nl, &value, &vl) != 0 {
			break
		}
		req.Headers = append(req.Headers, Header{
			Name:  string(cBytes(name, nl)),
			Value: append([]byte(nil), cBytes(value, vl)...),
		})
	}
	return req
}
