package backend

/*
#include <stdint.h>
#include "corelay_backend.h"
*/
import "C"

import "runtime/cgo"

// The C ABI calls these (through the callbacks built in backend.go); user carries a
// cgo.Handle as an integer. A panic in a service ends the process (it cannot unwind
// through the C frames in between).

//export corelayGoOnOpen
func corelayGoOnOpen(user C.uintptr_t, ctx *C.corelay_ctx, conn C.uint64_t, req *C.corelay_open_request) {
	d := cgo.Handle(user).Value().(*dispatch)
	d.ctx.c = ctx
	v := d.svc.OnOpen(&d.ctx, uint64(conn), decodeOpen(req))
	if v.reject != 0 {
		C.corelay_reject(ctx, C.uint16_t(v.reject))
	} else {
		sub := []byte(v.subprotocol)
		C.corelay_accept(ctx, bytesPtr(sub), C.size_t(len(sub)))
	}
	d.ctx.c = nil
}

//export corelayGoOnMessage
func corelayGoOnMessage(user C.uintptr_t, ctx *C.corelay_ctx, conn C.uint64_t, binary C.int, data *C.uint8_t, n C.size_t) {
	d := cgo.Handle(user).Value().(*dispatch)
	d.ctx.c = ctx
	d.svc.OnMessage(&d.ctx, uint64(conn), cBytes(data, n), binary != 0)
	d.ctx.c = nil
}

//export corelayGoOnClosed
func corelayGoOnClosed(user C.uintptr_t, ctx *C.corelay_ctx, conn C.uint64_t, code C.uint16_t, reason *C.uint8_t, n C.size_t) {
	d := cgo.Handle(user).Value().(*dispatch)
	d.ctx.c = ctx
	d.svc.OnClosed(&d.ctx, uint64(conn), uint16(code), cBytes(reason, n))
	d.ctx.c = nil
}

//export corelayGoWithCtx
func corelayGoWithCtx(user C.uintptr_t, ctx *C.corelay_ctx) {
	f := cgo.Handle(user).Value().(func(*Ctx))
	c := Ctx{c: ctx}
	f(&c)
}
