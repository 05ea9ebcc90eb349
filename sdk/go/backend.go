// Package backend serves a corelay gateway's connections from Go, through the C ABI
// (sdk/c, corelay_backend.h) with cgo.
//
// Build against the C library: CGO_LDFLAGS=-L<dir holding libcorelay_backend.a> (a directory
// with only the static library links it into the binary; with libcorelay_backend.so beside
// it the binary needs that at run time). See sdk/go/README.md.
//
//	type echo struct{ backend.BaseService }
//
//	func (echo) OnMessage(c *backend.Ctx, conn uint64, data []byte, binary bool) {
//		c.Reply(data, binary)
//	}
//
//	b, err := backend.AttachEnv(10 * time.Second)
//	...
//	err = b.Run(echo{}) // until the gateway goes away: ErrGatewayGone
//
// A Backend is not safe for concurrent use: call it from one goroutine (callbacks run on
// that goroutine, inside Run or Poll).
package backend

/*
#cgo CFLAGS: -I${SRCDIR}/../c/include
#cgo LDFLAGS: -lcorelay_backend -lgcc_s -lutil -lrt -lpthread -lm -ldl
#include <stdint.h>
#include "corelay_backend.h"

// The exported Go callbacks (export.go) take the cgo.Handle as an integer; these
// trampolines give the ABI the `void *user` signatures it expects.
extern void corelayGoOnOpen(uintptr_t, struct corelay_ctx *, uint64_t, struct corelay_open_request *);
extern void corelayGoOnMessage(uintptr_t, struct corelay_ctx *, uint64_t, int, uint8_t *, size_t);
extern void corelayGoOnClosed(uintptr_t, struct corelay_ctx *, uint64_t, uint16_t, uint8_t *, size_t);
extern void corelayGoWithCtx(uintptr_t, struct corelay_ctx *);

static void corelay_go_on_open(void *u, struct corelay_ctx *c, uint64_t conn, const struct corelay_open_request *r) {
	corelayGoOnOpen((uintptr_t)u, c, conn, (struct corelay_open_request *)r);
}
static void corelay_go_on_message(void *u, struct corelay_ctx *c, uint64_t conn, int binary, const uint8_t *d, size_t n) {
	corelayGoOnMessage((uintptr_t)u, c, conn, binary, (uint8_t *)d, n);
}
static void corelay_go_on_closed(void *u, struct corelay_ctx *c, uint64_t conn, uint16_t code, const uint8_t *r, size_t n) {
	corelayGoOnClosed((uintptr_t)u, c, conn, code, (uint8_t *)r, n);
}
static void corelay_go_with_ctx_cb(void *u, struct corelay_ctx *c) {
	corelayGoWithCtx((uintptr_t)u, c);
}

// A cgo.Handle travels through the ABI's `void *user` as an integer, never as a Go pointer.
static corelay_callbacks corelay_go_callbacks(uintptr_t h) {
	corelay_callbacks c = { (void *)h, corelay_go_on_open, corelay_go_on_message, corelay_go_on_closed };
	return c;
}

static enum corelay_status corelay_go_with_ctx(struct corelay_backend *b, uintptr_t h) {
	return corelay_with_ctx(b, corelay_go_with_ctx_cb, (void *)h);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"time"
	"unsafe"
)

// Status is a non-OK corelay_status with the library's message.
type Status struct {
	Code    int
	Message string
}

func (s *Status) Error() string {
	return fmt.Sprintf("corelay backend: %s (status %d)", s.Message, s.Code)
}

// Is makes errors.Is(err, ErrGatewayGone) match any GatewayGone status.
func (s *Status) Is(target error) bool {
	t, ok := target.(*Status)
	return ok && t.Code == s.Code && t.Message == ""
}

// ErrGatewayGone: the gateway closed the attach socket (it exited). Reattach or exit.
var ErrGatewayGone = &Status{Code: int(C.CORELAY_STATUS_GATEWAY_GONE)}

// call runs f (one ABI call) on a locked OS thread, so that the thread-local last error read
// after a failure is this call's.
func call(f func() C.enum_corelay_status) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	st := f()
	if st == C.CORELAY_STATUS_OK {
		return nil
	}
	return &Status{Code: int(st), Message: C.GoString(C.corelay_last_error())}
}

// Backend is an attached backend: one ring pair per gateway shard.
type Backend struct {
	b *C.corelay_backend
}

// Attach attaches to the gateway's attach socket as a backend of route (0 = default).
func Attach(path string, route uint32) (*Backend, error) {
	cs := C.CString(path)
	defer C.free(unsafe.Pointer(cs))
	var b *C.corelay_backend
	if err := call(func() C.enum_corelay_status { return C.corelay_attach(cs, C.uint32_t(route), &b) }); err != nil {
		return nil, err
	}
	return &Backend{b: b}, nil
}

// AttachEnv attaches as CORELAY_ATTACH, CORELAY_ROUTE and CORELAY_HEARTBEAT_MS say, retrying
// for up to retry while the gateway starts.
func AttachEnv(retry time.Duration) (*Backend, error) {
	var b *C.corelay_backend
	ms := C.uint32_t(retry.Milliseconds())
	if err := call(func() C.enum_corelay_status { return C.corelay_attach_env(ms, &b) }); err != nil {
		return nil, err
	}
	return &Backend{b: b}, nil
}

// Close detaches (the gateway hands this backend's work to a successor). Idempotent.
func (b *Backend) Close() {
	if b.b != nil {
		C.corelay_backend_free(b.b)
		b.b = nil
	}
}

func (b *Backend) live() error {
	if b.b == nil {
		return errors.New("corelay backend: used after Close")
	}
	return nil
}

// Shards is the number of gateway shards (one ring pair each).
func (b *Backend) Shards() int {
	if b.b == nil {
		return 0
	}
	return int(C.corelay_shards(b.b))
}

// SetHeartbeat announces a liveness policy; Run then beats every interval.
func (b *Backend) SetHeartbeat(interval, timeout time.Duration) error {
	if err := b.live(); err != nil {
		return err
	}
	return call(func() C.enum_corelay_status {
		return C.corelay_set_heartbeat(b.b, C.uint32_t(interval.Milliseconds()), C.uint32_t(timeout.Milliseconds()))
	})
}

// SendHeartbeat sends one heartbeat per shard now (for a loop of your own around Poll).
func (b *Backend) SendHeartbeat() error {
	if err := b.live(); err != nil {
		return err
	}
	return call(func() C.enum_corelay_status { return C.corelay_send_heartbeat(b.b) })
}

// SetSpin sets how long Run polls the rings before parking (0: park at once).
func (b *Backend) SetSpin(d time.Duration) error {
	if err := b.live(); err != nil {
		return err
	}
	return call(func() C.enum_corelay_status { return C.corelay_set_spin(b.b, C.uint32_t(d.Microseconds())) })
}

// WakeFds are the descriptors to watch for readability in a loop of your own: one per shard,
// then the attach socket.
func (b *Backend) WakeFds() []int {
	if b.b == nil {
		return nil
	}
	n := C.corelay_wake_fds(b.b, nil, 0)
	fds := make([]C.int, int(n))
	if n > 0 {
		C.corelay_wake_fds(b.b, &fds[0], n)
	}
	out := make([]int, len(fds))
	for i, fd := range fds {
		out[i] = int(fd)
	}
	return out
}

// dispatch is what a callback's handle holds: the service and the Ctx reused for every event.
type dispatch struct {
	svc Service
	ctx Ctx
}

// Poll handles what is available now without blocking and returns how many records it
// handled. 0 means every ring was empty and the backend is parked: wait until a WakeFds
// descriptor is readable, then call again.
func (b *Backend) Poll(s Service) (int, error) {
	if err := b.live(); err != nil {
		return 0, err
	}
	h := cgo.NewHandle(&dispatch{svc: s})
	defer h.Delete()
	cbs := C.corelay_go_callbacks(C.uintptr_t(h))
	var n C.size_t
	err := call(func() C.enum_corelay_status { return C.corelay_poll(b.b, &cbs, &n) })
	return int(n), err
}

// Run serves until the gateway goes away (ErrGatewayGone) or an error occurs: polls, spins
// briefly when idle, parks on the doorbells, beats the heartbeat.
func (b *Backend) Run(s Service) error {
	if err := b.live(); err != nil {
		return err
	}
	h := cgo.NewHandle(&dispatch{svc: s})
	defer h.Delete()
	cbs := C.corelay_go_callbacks(C.uintptr_t(h))
	return call(func() C.enum_corelay_status { return C.corelay_run(b.b, &cbs) })
}

// WithCtx acts outside a callback (complete deferred requests, push, publish): f gets a Ctx
// valid during the call; what it queued is published before WithCtx returns.
func (b *Backend) WithCtx(f func(*Ctx)) error {
	if err := b.live(); err != nil {
		return err
	}
	h := cgo.NewHandle(f)
	defer h.Delete()
	return call(func() C.enum_corelay_status { return C.corelay_go_with_ctx(b.b, C.uintptr_t(h)) })
}

// GroupID is the group id of a name (FNV-1a 64, the same in every SDK).
func GroupID(name string) uint64 {
	b := []byte(name)
	return uint64(C.corelay_group_id(bytesPtr(b), C.size_t(len(b))))
}

// bytesPtr is the C view of b's first byte (NULL when empty). C only reads it during the call.
func bytesPtr(b []byte) *C.uint8_t {
	if len(b) == 0 {
		return nil
	}
	return (*C.uint8_t)(unsafe.Pointer(&b[0]))
}
