package workerproto

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
)

// The conversions between signed and unsigned integers of one width below copy bit
// patterns on purpose (two's complement on the wire), so gosec's overflow check
// (G115) does not apply to them.

// encoder appends the protocol's primitive values to a byte slice: fixed-width
// little-endian numbers, uvarint lengths, and raw little-endian float32/int32 arrays
// (so hidden states and logits cross the process boundary without text conversion).
type encoder struct{ b []byte }

func (e *encoder) u8(v uint8)   { e.b = append(e.b, v) }
func (e *encoder) i8(v int8)    { e.b = append(e.b, uint8(v)) } //nolint:gosec // bit pattern
func (e *encoder) u32(v uint32) { e.b = binary.LittleEndian.AppendUint32(e.b, v) }
func (e *encoder) i32(v int32)  { e.u32(uint32(v)) } //nolint:gosec // bit pattern
func (e *encoder) u64(v uint64) { e.b = binary.LittleEndian.AppendUint64(e.b, v) }
func (e *encoder) f32(v float32) {
	e.u32(math.Float32bits(v))
}
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }

// length writes a count (never negative).
func (e *encoder) length(n int) { e.uvarint(uint64(n)) }    //nolint:gosec // len() is never negative
func (e *encoder) int(v int)    { e.u64(uint64(int64(v))) } //nolint:gosec // bit pattern
func (e *encoder) bool(v bool) {
	if v {
		e.u8(1)
	} else {
		e.u8(0)
	}
}
func (e *encoder) str(s string) {
	e.length(len(s))
	e.b = append(e.b, s...)
}

// f32s writes a length and the raw floats. A nil slice and an empty one are the same
// on the wire (the runtime does not distinguish them either).
func (e *encoder) f32s(v []float32) {
	e.length(len(v))
	for _, f := range v {
		e.b = binary.LittleEndian.AppendUint32(e.b, math.Float32bits(f))
	}
}

func (e *encoder) i32s(v []int32) {
	e.length(len(v))
	for _, x := range v {
		e.b = binary.LittleEndian.AppendUint32(e.b, uint32(x)) //nolint:gosec // bit pattern
	}
}

// optI32s writes presence then the array, for arguments where NULL differs from empty.
func (e *encoder) optI32s(v []int32) {
	e.bool(v != nil)
	if v != nil {
		e.i32s(v)
	}
}

// errShort is the decoder's sticky error for a payload that ends early or claims a
// length beyond its end.
var errShort = errors.New("payload truncated")

// decoder reads what encoder wrote. Errors are sticky: after the first one every read
// returns a zero value, and err reports it. No length read from the payload makes it
// allocate more than the payload's own size.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.b) {
		d.err = errShort
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if b := d.take(1); b != nil {
		return b[0]
	}
	return 0
}
func (d *decoder) i8() int8 { return int8(d.u8()) } //nolint:gosec // bit pattern
func (d *decoder) u32() uint32 {
	if b := d.take(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}
func (d *decoder) i32() int32   { return int32(d.u32()) } //nolint:gosec // bit pattern
func (d *decoder) f32() float32 { return math.Float32frombits(d.u32()) }
func (d *decoder) u64() uint64 {
	if b := d.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}
func (d *decoder) int() int { return int(int64(d.u64())) } //nolint:gosec // bit pattern
func (d *decoder) bool() bool {
	switch d.u8() {
	case 0:
		return false
	case 1:
		return true
	}
	if d.err == nil {
		d.err = errors.New("boolean is neither 0 nor 1")
	}
	return false
}

// length reads a uvarint count of elements of size elem and checks that they fit in
// what is left of the payload.
func (d *decoder) length(elem int) int {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	if v > uint64(len(d.b)/elem) { //nolint:gosec // len is never negative
		d.err = fmt.Errorf("length %d exceeds the %d bytes left: %w", v, len(d.b), errShort)
		return 0
	}
	return int(v) //nolint:gosec // v <= len(d.b), checked above
}

func (d *decoder) str() string {
	n := d.length(1)
	return string(d.take(n))
}

func (d *decoder) f32s() []float32 {
	n := d.length(4)
	b := d.take(4 * n)
	if b == nil || n == 0 {
		return nil
	}
	v := make([]float32, n)
	for i := range v {
		v[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return v
}

func (d *decoder) i32s() []int32 {
	n := d.length(4)
	b := d.take(4 * n)
	if b == nil || n == 0 {
		return nil
	}
	v := make([]int32, n)
	for i := range v {
		v[i] = int32(binary.LittleEndian.Uint32(b[4*i:])) //nolint:gosec // bit pattern
	}
	return v
}

func (d *decoder) optI32s() []int32 {
	if !d.bool() {
		return nil
	}
	v := d.i32s()
	if v == nil && d.err == nil {
		v = []int32{}
	}
	return v
}

// finish reports the sticky error, or an error when bytes are left over.
func (d *decoder) finish() error {
	if d.err != nil {
		return d.err
	}
	if len(d.b) != 0 {
		return fmt.Errorf("%d unexpected bytes after the message", len(d.b))
	}
	return nil
}
