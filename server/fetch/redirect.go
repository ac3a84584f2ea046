package fetch

import (
	"fmt"
	"net/http"
	"net/url"
)

// MaxRedirects is the most redirects one request follows (as net/http's default, but
// the error is permanent: a chain that long is not a transient failure).
const MaxRedirects = 10

// checkRedirect is the client's redirect policy. Every refusal is permanent (retrying
// gets the same redirect): a scheme other than http(s) (file://, ftp://), a loop, more
// than MaxRedirects, and, unless AllowInsecureRedirect, a step from https down to plain
// http, where anyone on the way could change the file unseen (without --sha256 nothing
// else would catch it).
func (o *Options) checkRedirect(req *http.Request, via []*http.Request) error {
	from := via[len(via)-1].URL
	to := req.URL
	if to.Scheme != "http" && to.Scheme != "https" {
		return &permanentError{fmt.Errorf("%s redirects to %s: only http and https redirects are followed", short(from), short(to))}
	}
	if to.Scheme == "http" && !o.AllowInsecureRedirect {
		for _, v := range via {
			if v.URL.Scheme == "https" {
				return &permanentError{fmt.Errorf("%s redirects from https to plain http (%s): refused, since anyone on the way could change the file; "+
					"use a URL that stays on https, or --allow-insecure-redirect if the network is trusted", short(from), short(to))}
			}
		}
	}
	for _, v := range via {
		if v.URL.String() == to.String() {
			return &permanentError{fmt.Errorf("redirect loop: %s redirects back to %s; fix the URL or the server", short(from), short(to))}
		}
	}
	if len(via) >= MaxRedirects {
		return &permanentError{fmt.Errorf("more than %d redirects (the last to %s); fix the URL or the server", MaxRedirects, short(to))}
	}
	return nil
}

// short is a URL without its query and credentials, for messages: signed URLs carry
// secrets there.
func short(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.ForceQuery, c.Fragment = nil, "", false, ""
	return c.String()
}
