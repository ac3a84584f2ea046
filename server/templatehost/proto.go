package templatehost

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"

	"github.com/rkllm-operator/rkllm-operator/server/chattemplate"
)

// The protocol between the host and a renderer process, over the renderer's stdin and
// stdout: frames of a 4-byte big-endian length and a payload. The host sends a load
// frame (JSON of loadRequest), then one frame per render (JSON of a
// chattemplate.Conversation). The renderer answers each with a status byte followed by
// the prompt or the error's text.

// Reply statuses.
const (
	statusOK byte = iota
	// statusInvalid: the template failed on the conversation (raise_exception, an
	// undefined call, a panic in the library): chattemplate.ErrInvalid.
	statusInvalid
	// statusOutput: the rendered prompt is larger than MaxOutput.
	statusOutput
)

// loadRequest is the first frame: the template and the renderer's own limits.
type loadRequest struct {
	Template  chattemplate.JinjaSource `json:"template"`
	MaxMemory int64                    `json:"max_memory"`
	MaxOutput int64                    `json:"max_output"`
}

// replySlack is what a reply may hold beyond MaxOutput: its status and an error's text.
const replySlack = 64 << 10

func writeFrame(w *bufio.Writer, payload ...[]byte) error {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	var hdr [4]byte
	binary.BigEndian.PutUint32(hdr[:], uint32(n)) //nolint:gosec // frames are bounded far below 4 GiB
	if _, err := w.Write(hdr[:]); err != nil {
		return err
	}
	for _, p := range payload {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return w.Flush()
}

// readFrame reads one frame of at most limit bytes; a longer one is an error before
// anything is allocated for it.
func readFrame(r *bufio.Reader, limit int64) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int64(binary.BigEndian.Uint32(hdr[:]))
	if n > limit {
		return nil, fmt.Errorf("frame of %d bytes, over the limit of %d", n, limit)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}
