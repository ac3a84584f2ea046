package supervisor

import (
	"testing"

	"github.com/rkllm-operator/rkllm-operator/server/workerproto"
)

func TestKVCachePlan(t *testing.T) {
	tools := workerproto.SetFunctionTools{SystemPrompt: "S", Tools: `[{"name":"f"}]`, ToolResponseStr: "tool_response"}
	held := func(k *kvCache) *kvCache { k.set(noTools, "<u>hi</u><a>yo<eos>", 12); return k }
	cases := []struct {
		name   string
		cache  *kvCache
		tools  workerproto.SetFunctionTools
		prompt string
		allow  bool
		want   kvPlan
	}{
		{"empty cache", &kvCache{}, noTools, "<u>hi</u><a>", true, kvPlan{feed: "<u>hi</u><a>"}},
		{"follow-up extends the cache", held(&kvCache{}), noTools, "<u>hi</u><a>yo<eos><u>more</u><a>", true,
			kvPlan{reuse: true, feed: "<u>more</u><a>", cached: 12}},
		{"reuse switched off", held(&kvCache{}), noTools, "<u>hi</u><a>yo<eos><u>more</u><a>", false, kvPlan{feed: "<u>hi</u><a>yo<eos><u>more</u><a>"}},
		{"another conversation", held(&kvCache{}), noTools, "<u>bye</u><a>", true, kvPlan{feed: "<u>bye</u><a>"}},
		{"an edited reply", held(&kvCache{}), noTools, "<u>hi</u><a>YO<eos><u>more</u><a>", true, kvPlan{feed: "<u>hi</u><a>YO<eos><u>more</u><a>"}},
		{"the same prompt again (regenerate)", held(&kvCache{}), noTools, "<u>hi</u><a>", true, kvPlan{feed: "<u>hi</u><a>"}},
		{"exactly the cache: nothing new to feed", held(&kvCache{}), noTools, "<u>hi</u><a>yo<eos>", true, kvPlan{feed: "<u>hi</u><a>yo<eos>"}},
		{"other tools, other system prompt", held(&kvCache{}), tools, "<u>hi</u><a>yo<eos><u>more</u><a>", true, kvPlan{feed: "<u>hi</u><a>yo<eos><u>more</u><a>"}},
		{"invalidated", func() *kvCache { k := held(&kvCache{}); k.invalidate(); return k }(), noTools, "<u>hi</u><a>yo<eos><u>more</u><a>", true,
			kvPlan{feed: "<u>hi</u><a>yo<eos><u>more</u><a>"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := c.cache.plan(c.tools, c.prompt, c.allow); got != c.want {
				t.Errorf("plan = %+v, want %+v", got, c.want)
			}
		})
	}
	var k kvCache
	k.set(tools, "x", -1)
	if p := k.plan(tools, "xy", true); !p.reuse || p.feed != "y" || p.cached != -1 {
		t.Errorf("same tools: %+v", p)
	}
}

func TestReplyText(t *testing.T) {
	var r replyText
	r.add(false, "caf", 300)
	r.add(true, "\xc3", 5)
	if !r.incomplete() {
		t.Error("half a character is not complete")
	}
	r.add(false, "\xa9!", 6)
	r.add(false, "", -1)
	if r.incomplete() || r.text.String() != "café!" || r.tokens != 3 {
		t.Errorf("text %q tokens %d", r.text.String(), r.tokens)
	}
	for _, c := range []struct {
		reply string
		ended bool
		want  string
	}{
		{"yo", true, "yo<eos>"},      // skip_special_token: the EOS was not delivered but is in the cache
		{"yo<eos>", true, "yo<eos>"}, // delivered as text
		{"yo", false, "yo"},          // cut at max_new_tokens: no EOS
	} {
		if got := cachedText(c.reply, "<eos>", c.ended); got != c.want {
			t.Errorf("cachedText(%q, %v) = %q, want %q", c.reply, c.ended, got, c.want)
		}
	}
}

func TestSameHandleState(t *testing.T) {
	a := &workerproto.SetFunctionTools{SystemPrompt: "S", Tools: "[1]"}
	b := &workerproto.SetFunctionTools{SystemPrompt: "S", Tools: "[1]"}
	if !sameTools(a, b) || !sameTools(nil, clearTools) || sameTools(a, nil) || !sameTools(&workerproto.SetFunctionTools{Tools: "[]"}, nil) {
		t.Error("sameTools")
	}
	if !sameTemplate(templateOff, &workerproto.SetChatTemplate{}) || sameTemplate(nil, templateOff) {
		t.Error("sameTemplate")
	}
}
