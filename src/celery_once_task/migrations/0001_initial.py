"""The unmanaged ``Lock`` model: no table, only the ``clear_lock`` permission."""

from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.CreateModel(
            name="Lock",
            fields=[
                ("id", models.AutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
            ],
            options={
                "verbose_name": "lock",
                "managed": False,
                "default_permissions": (),
                "permissions": [("clear_lock", "Can clear a celery-once-task lock")],
            },
        ),
    ]
