/* SPDX-License-Identifier: GPL-2.0 */
#ifndef GRELAY_KERNEL_TESTS_UAPI_CHECK_H
#define GRELAY_KERNEL_TESTS_UAPI_CHECK_H

#ifdef __cplusplus
extern "C" {
#endif

struct uapi_value {
	const char *name;
	unsigned long long value;
};

extern const struct uapi_value uapi_kernel[];

#ifdef __cplusplus
}
#endif

#endif
