package ollama

import "strings"

const (
	thinkOpen  = "<think>"
	thinkClose = "</think>"
)

// reasoning splits a reply's leading <think>...</think> block off its content as the
// text comes, for requests with think true: Ollama gives the reasoning as "thinking"
// and the answer alone as "content". Text that may still turn out to be a tag is held
// back; white space around the block is dropped.
type reasoning struct {
	state int // before the reply's first text, inside the block, after it
	held  string
	// trim drops white space at the start of the part being given out.
	trim bool
}

const (
	before = iota
	inside
	after
)

// split takes the next piece of the reply and returns what can be given out now.
func (r *reasoning) split(s string) (thinking, content string) {
	text := r.held + s
	r.held = ""
	for text != "" {
		switch r.state {
		case before:
			t := strings.TrimLeft(text, " \t\r\n")
			switch {
			case strings.HasPrefix(t, thinkOpen):
				r.state, r.trim, text = inside, true, t[len(thinkOpen):]
			case strings.HasPrefix(thinkOpen, t):
				r.held = text
				return thinking, content
			default:
				r.state = after
			}
		case inside:
			if r.trim {
				if text = strings.TrimLeft(text, " \t\r\n"); text == "" {
					return thinking, content
				}
				r.trim = false
			}
			if i := strings.Index(text, thinkClose); i >= 0 {
				thinking += strings.TrimRight(text[:i], " \t\r\n")
				r.state, r.trim, text = after, true, text[i+len(thinkClose):]
				continue
			}
			// Hold a partial tag back, and the white space before it (dropped if the
			// tag follows).
			keep := partialSuffix(text, thinkClose)
			body := strings.TrimRight(text[:len(text)-keep], " \t\r\n")
			thinking += body
			r.held = text[len(body):]
			return thinking, content
		default:
			if r.trim {
				if text = strings.TrimLeft(text, " \t\r\n"); text == "" {
					return thinking, content
				}
				r.trim = false
			}
			return thinking, content + text
		}
	}
	return thinking, content
}

// flush gives out what is held back at the end of the reply.
func (r *reasoning) flush() (thinking, content string) {
	held := r.held
	r.held = ""
	if r.state == inside {
		return held, ""
	}
	return "", held
}

// partialSuffix is the length of the longest end of text that begins tag.
func partialSuffix(text, tag string) int {
	for n := min(len(tag)-1, len(text)); n > 0; n-- {
		if strings.HasSuffix(text, tag[:n]) {
			return n
		}
	}
	return 0
}
